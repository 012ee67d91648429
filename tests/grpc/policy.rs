//! Frame policy on a stream: `max_fps` judged by the client's timestamps, `max_age_ms` against a
//! slow model, and every frame accounted for in `dropped`, by reason, in both delivery modes.

use std::{path::PathBuf, time::Duration};

use siglip_serve::grpc::pb::{self, siglip_client::SiglipClient, stream_request::Msg};
use tonic::{transport::Channel, Code};

use crate::common::{asset, server::Server};
use crate::{assert_status, encoded, stream_all, LABELS};

fn watching(mode: pb::DeliveryMode, policy: pb::FramePolicy) -> pb::StreamRequest {
    pb::StreamRequest {
        msg: Some(Msg::Config(pb::StreamConfig {
            model: String::new(),
            texts: LABELS.iter().map(|s| s.to_string()).collect(),
            mode: mode as i32,
            policy: Some(policy),
            ..Default::default()
        })),
    }
}

fn frame_at(id: u64, timestamp_us: i64, image: &[u8]) -> pb::StreamRequest {
    pb::StreamRequest {
        msg: Some(Msg::Frame(pb::Frame {
            frame_id: id,
            timestamp_us,
            image: encoded(image.to_vec()),
            ..Default::default()
        })),
    }
}

fn dropped(r: &pb::StreamResponse) -> pb::DropCounts {
    r.dropped.expect("every message carries its drop counts")
}

const RATE_DROPS: &str = "siglip_stream_frames_dropped_total{reason=\"rate\"}";
const STALE_DROPS: &str = "siglip_stream_frames_dropped_total{reason=\"stale\"}";

/// 29 frames 10 ms apart (100 fps) against `max_fps` 25.
fn a_100fps_source(mode: pb::DeliveryMode) -> Vec<pb::StreamRequest> {
    let rocket = asset("rocket.bmp");
    let policy = pb::FramePolicy {
        max_fps: 25.0,
        max_age_ms: 0,
    };
    let mut messages = vec![watching(mode, policy)];
    messages.extend((0..29).map(|k| frame_at(k, k as i64 * 10_000, &rocket)));
    messages
}

#[tokio::test]
async fn max_fps_keeps_every_fourth_frame_of_a_100fps_source_in_order() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let before = server.metric(RATE_DROPS).await;
    let results = stream_all(&mut client, a_100fps_source(pb::DeliveryMode::EveryFrame)).await;
    let ids: Vec<u64> = results.iter().map(|r| r.frame_id).collect();
    assert_eq!(ids, (0..29).step_by(4).collect::<Vec<_>>());
    let rate: Vec<u64> = results.iter().map(|r| dropped(r).rate).collect();
    assert_eq!(rate, [0, 3, 3, 3, 3, 3, 3, 3]);
    for r in &results {
        assert_eq!(r.skipped_frames, dropped(r).rate, "frame {}", r.frame_id);
        assert_eq!(r.classified_frames, 1);
        assert_eq!(r.scores.len(), LABELS.len());
        assert!(!r.heartbeat);
    }
    assert_eq!(server.metric(RATE_DROPS).await - before, 21.0);
}

#[tokio::test]
async fn max_fps_in_latest_only_mode_accounts_for_every_frame() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let results = stream_all(&mut client, a_100fps_source(pb::DeliveryMode::LatestOnly)).await;
    let rate: u64 = results.iter().map(|r| dropped(r).rate).sum();
    let skipped: u64 = results.iter().map(|r| r.skipped_frames).sum();
    let scored = results.iter().filter(|r| !r.scores.is_empty()).count() as u64;
    assert_eq!(rate, 21, "{results:?}");
    assert_eq!(scored + skipped, 29, "{results:?}");
    for r in &results {
        let d = dropped(r);
        assert_eq!(r.skipped_frames, d.superseded + d.rate + d.stale + d.error);
        assert_eq!(r.frame_id % 4, 0, "only kept frames are answered: {r:?}");
    }
}

#[tokio::test]
async fn a_timestamp_going_backwards_starts_the_rate_afresh() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let rocket = asset("rocket.bmp");
    for mode in [pb::DeliveryMode::EveryFrame, pb::DeliveryMode::LatestOnly] {
        let policy = pb::FramePolicy {
            max_fps: 1.0,
            max_age_ms: 0,
        };
        // 1 fps: frame 1 comes 100 ms after frame 0 and is skipped; frame 2 (a new clip at t=0)
        // is taken, frame 3 is skipped again.
        let messages = vec![
            watching(mode, policy),
            frame_at(0, 5_000_000, &rocket),
            frame_at(1, 5_100_000, &rocket),
            frame_at(2, 0, &rocket),
            frame_at(3, 100_000, &rocket),
        ];
        let results = stream_all(&mut client, messages).await;
        let scored: Vec<u64> = results
            .iter()
            .filter(|r| !r.scores.is_empty())
            .map(|r| r.frame_id)
            .collect();
        assert!(scored.contains(&2), "{mode:?}: {results:?}");
        let rate: u64 = results.iter().map(|r| dropped(r).rate).sum();
        assert_eq!(rate, 2, "{mode:?}: {results:?}");
        if mode == pb::DeliveryMode::EveryFrame {
            assert_eq!(scored, [0, 2]);
            // Frame 3's drop is reported at the end, in one last message about it.
            let last = results.last().unwrap();
            assert!(last.heartbeat && last.scores.is_empty(), "{last:?}");
            assert_eq!((last.frame_id, dropped(last).rate), (3, 1));
        }
    }
}

#[tokio::test]
async fn a_chunked_frame_over_the_rate_is_read_and_let_go() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let cat = asset("chelsea_progressive.jpg");
    let (a, b) = cat.split_at(cat.len() / 2);
    let chunk = |id: u64, ts: i64, bytes: &[u8], last: bool| pb::StreamRequest {
        msg: Some(Msg::Frame(pb::Frame {
            frame_id: id,
            timestamp_us: ts,
            chunk: bytes.to_vec(),
            last,
            ..Default::default()
        })),
    };
    let policy = pb::FramePolicy {
        max_fps: 10.0,
        max_age_ms: 0,
    };
    let messages = vec![
        watching(pb::DeliveryMode::EveryFrame, policy),
        chunk(0, 0, a, false),
        chunk(0, 0, b, true),
        chunk(1, 50_000, a, false),
        chunk(1, 50_000, b, true),
        chunk(2, 100_000, a, false),
        chunk(2, 100_000, b, true),
    ];
    let results = stream_all(&mut client, messages).await;
    let ids: Vec<u64> = results.iter().map(|r| r.frame_id).collect();
    assert_eq!(ids, [0, 2]);
    assert_eq!(dropped(&results[1]).rate, 1);
    assert!(results
        .iter()
        .all(|r| r.error.is_none() && !r.scores.is_empty()));
}

#[tokio::test]
async fn bad_policy_values_end_the_stream_with_invalid_argument() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    for max_fps in [f32::NAN, -1.0, f32::INFINITY] {
        let policy = pb::FramePolicy {
            max_fps,
            max_age_ms: 0,
        };
        let status = client
            .stream(tokio_stream::iter(vec![watching(
                pb::DeliveryMode::EveryFrame,
                policy,
            )]))
            .await
            .map(|r| r.into_inner())
            .expect("stream opens");
        let status = futures_util::StreamExt::collect::<Vec<_>>(status)
            .await
            .into_iter()
            .find_map(Result::err)
            .expect("the stream ends with an error");
        assert_status(
            &format!("max_fps {max_fps}"),
            &status,
            Code::InvalidArgument,
            "policy.max_fps",
        );
    }
}

/// The time this server takes to preprocess (decode and resize) `image` as a stream frame, with
/// no policy: the smallest of two frames.
async fn preprocess_time(client: &mut SiglipClient<Channel>, image: &[u8]) -> Duration {
    let mut messages = vec![watching(
        pb::DeliveryMode::EveryFrame,
        pb::FramePolicy::default(),
    )];
    messages.extend((0..2).map(|k| frame_at(k, k as i64 * 40_000, image)));
    let results = stream_all(client, messages).await;
    let us = results
        .iter()
        .map(|r| r.timings.expect("timings").preprocess_us)
        .min()
        .expect("results");
    Duration::from_micros(us)
}

/// A frame that takes longer to decode than `max_age_ms` allows is dropped as stale, never
/// answered: only the last message, reporting the drops, comes back.
///
/// `max_age_ms` is 1, the least there is; the frame is a 3-megapixel photo, or the photo tiled
/// until this server takes at least 4 ms to preprocess it (measured here), so that no frame can
/// be ready in time whatever the decoder's speed.
#[tokio::test]
async fn frames_that_cannot_be_ready_in_time_are_dropped_as_stale() {
    const MAX_AGE_MS: u32 = 1;
    // Room for a tiled photo in one message.
    let server = Server::ready(&["--max-message-bytes", &(32 << 20).to_string()]).await;
    let mut client = server.client().await;
    let photo = asset("coffee_2000x1500.jpg");
    let mut big = photo.clone();
    let mut tiles = 1;
    loop {
        let took = preprocess_time(&mut client, &big).await;
        if took >= Duration::from_millis(4 * MAX_AGE_MS as u64) {
            break;
        }
        // 2000×1500 tiled 4×4 is 48 megapixels, within the default 50.
        assert!(
            tiles < 4,
            "premise broken: a {tiles}×{tiles} tiling of the photo is preprocessed in {took:?}, \
             under 4 × max_age_ms"
        );
        tiles += 1;
        big = crate::common::tiled_jpeg(&photo, tiles);
    }
    let before = server.metric(STALE_DROPS).await;
    for mode in [pb::DeliveryMode::EveryFrame, pb::DeliveryMode::LatestOnly] {
        let policy = pb::FramePolicy {
            max_fps: 0.0,
            max_age_ms: MAX_AGE_MS,
        };
        let mut messages = vec![watching(mode, policy)];
        messages.extend((0..4).map(|k| frame_at(k, k as i64 * 40_000, &big)));
        let results = stream_all(&mut client, messages).await;
        assert_eq!(results.len(), 1, "{mode:?}: {results:?}");
        let last = &results[0];
        assert!(last.heartbeat && last.scores.is_empty(), "{last:?}");
        let d = dropped(last);
        assert_eq!(d.stale + d.superseded, 4, "{mode:?}: {d:?}");
        if mode == pb::DeliveryMode::EveryFrame {
            assert_eq!((last.frame_id, d.stale), (3, 4));
        }
        assert!(d.stale >= 1);
    }
    assert!(server.metric(STALE_DROPS).await - before >= 5.0);
}

/// The model that takes a good part of a second per image (base-224 on a CPU).
fn slow_model() -> PathBuf {
    PathBuf::from(
        std::env::var("SIGLIP_TEST_SLOW_MODEL_DIR")
            .expect("SIGLIP_TEST_SLOW_MODEL_DIR: the base-224 export (make test sets it)"),
    )
}

/// Frames sent back to back to a slow model, one image per pass: with a long `max_age_ms`
/// nothing is stale; with one pass and a half more than a frame's own preprocessing, the first
/// frame to reach the model is answered, at least one frame goes stale, and every frame is
/// accounted for. (The pipeline decodes a stream's frames side by side, so the first to reach
/// the queue need not be frame 0.)
///
/// Both figures come from the patient run: the shortest pass, and the longest time a frame spent
/// neither in the queue nor in inference (receiving, decoding, resizing). The patient run also
/// shows whether frames wait behind the model long enough to go stale at that age: frames sent
/// back to back only do when a pass takes longer than preprocessing a frame, as the base-224
/// model does on a CPU.
#[tokio::test]
async fn max_age_drops_frames_that_wait_behind_a_slow_model() {
    let server = Server::ready_model(&slow_model(), &["--max-batch-size", "1"], &[]).await;
    let mut client = server.client().await;
    let rocket = asset("rocket.bmp");
    let policy = |max_age_ms| pb::FramePolicy {
        max_fps: 0.0,
        max_age_ms,
    };
    let stream = |max_age_ms| {
        let mut messages = vec![watching(pb::DeliveryMode::EveryFrame, policy(max_age_ms))];
        messages.extend((0..8).map(|k| frame_at(k, k as i64 * 33_333, &rocket)));
        messages
    };
    let patient = stream_all(&mut client, stream(60_000)).await;
    assert_eq!(patient.len(), 8);
    assert!(patient.iter().all(|r| dropped(r).stale == 0));
    let timings: Vec<pb::Timings> = patient.iter().map(|r| r.timings.unwrap()).collect();
    let pass_us = timings.iter().map(|t| t.inference_us).min().unwrap();
    let overhead_us = timings
        .iter()
        .map(|t| t.total_us.saturating_sub(t.inference_us + t.queue_us))
        .max()
        .unwrap();
    let max_age_ms = ((overhead_us + pass_us * 3 / 2) / 1000).max(1) as u32;
    // Time from arrival to inference, which is what max_age_ms is held against.
    let waited_ms = timings
        .iter()
        .map(|t| t.total_us.saturating_sub(t.inference_us) / 1000)
        .max()
        .unwrap();
    assert!(
        waited_ms > max_age_ms as u64,
        "premise broken: no frame waited longer than max_age_ms {max_age_ms} before inference \
         even with nothing dropped (at most {waited_ms} ms; a pass takes {pass_us} µs), so none \
         would go stale"
    );
    eprintln!(
        "max_age: a pass {pass_us} µs, preprocessing {overhead_us} µs, max_age_ms {max_age_ms}"
    );
    let hasty = stream_all(&mut client, stream(max_age_ms)).await;
    let scored = hasty.iter().filter(|r| !r.scores.is_empty()).count() as u64;
    let stale: u64 = hasty.iter().map(|r| dropped(r).stale).sum();
    assert!(
        scored >= 1,
        "the first frame to reach the model waits for nothing: {hasty:?}"
    );
    assert!(
        (1..=7).contains(&stale),
        "max_age_ms {max_age_ms}: {hasty:?}"
    );
    assert_eq!(scored + stale, 8, "{hasty:?}");
}
