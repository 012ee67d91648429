//! Stream: frames in, results out, in either delivery mode; its protocol, the limit on open
//! streams and their lifetime.

use std::time::{Duration, Instant};

use siglip_serve::grpc::pb::{self, stream_request::Msg};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::{asset, server::Server};
use crate::{
    assert_close, assert_status, by_index, config, encoded, expected, frame, frame_chunk, labels,
    open_stream, stream_all, LABELS,
};

/// An every-frame stream of frames 0 to 8: cat and rocket photos alternately (0–5), one that is
/// not an image (6), a cat sent in two chunks (7), then new labels ("a dog", "a cat") and the
/// cat again (8). Returns the results and the two photos.
async fn mixed_every_frame_stream() -> (Vec<pb::StreamResponse>, Vec<u8>, Vec<u8>) {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let cat = asset("chelsea_progressive.jpg");
    let rocket = asset("rocket.bmp");
    let mut messages = vec![config(&LABELS, pb::DeliveryMode::EveryFrame)];
    for id in 0..6 {
        messages.push(frame(
            id,
            if id % 2 == 0 {
                cat.clone()
            } else {
                rocket.clone()
            },
        ));
    }
    messages.push(frame(6, b"not an image".to_vec()));
    let (a, b) = cat.split_at(cat.len() / 3);
    messages.push(frame_chunk(7, a, false));
    messages.push(frame_chunk(7, b, true));
    messages.push(config(&["a dog", "a cat"], pb::DeliveryMode::Unspecified));
    messages.push(frame(8, cat.clone()));
    (stream_all(&mut client, messages).await, cat, rocket)
}

#[tokio::test]
async fn an_every_frame_stream_answers_every_frame_in_order() {
    let (results, _, _) = mixed_every_frame_stream().await;
    let ids: Vec<u64> = results.iter().map(|r| r.frame_id).collect();
    assert_eq!(ids, (0..9).collect::<Vec<_>>(), "every frame, in order");
}

/// A config that sets none of the watching fields gets plain results: no regions, events,
/// smoothed values or heartbeats, one message per frame, nothing dropped.
#[tokio::test]
async fn a_plain_config_sees_none_of_the_watching_fields() {
    let (results, _, _) = mixed_every_frame_stream().await;
    for r in &results {
        assert!(
            r.regions.is_empty() && r.events.is_empty() && !r.heartbeat,
            "{r:?}"
        );
        assert!(r.scores.iter().all(|s| s.smoothed_probability.is_none()));
        assert_eq!(r.dropped, Some(pb::DropCounts::default()));
        assert_eq!(r.skipped_frames, 0);
        let classified = u64::from(r.error.is_none());
        assert_eq!(r.classified_frames, classified, "frame {}", r.frame_id);
    }
}

#[tokio::test]
async fn each_frame_gets_its_images_probabilities_and_timestamp() {
    let (results, cat, rocket) = mixed_every_frame_stream().await;
    let want_cat = expected(&cat, &labels());
    let want_rocket = expected(&rocket, &labels());
    for r in &results[..6] {
        let want = if r.frame_id % 2 == 0 {
            &want_cat
        } else {
            &want_rocket
        };
        assert_close(&by_index(&r.scores, LABELS.len()), want);
        assert_eq!(r.timestamp_us, r.frame_id as i64 * 33_000);
        assert_eq!(r.config_generation, 0);
    }
}

#[tokio::test]
async fn a_frame_that_is_not_an_image_gets_an_error_in_band() {
    let (results, _, _) = mixed_every_frame_stream().await;
    let bad = results[6]
        .error
        .as_ref()
        .expect("in-band error for the bad frame");
    assert_eq!(bad.code, Code::InvalidArgument as i32);
    assert!(results[6].scores.is_empty());
}

#[tokio::test]
async fn a_frame_sent_in_chunks_scores_like_the_whole_image() {
    let (results, cat, _) = mixed_every_frame_stream().await;
    assert_close(
        &by_index(&results[7].scores, LABELS.len()),
        &expected(&cat, &labels()),
    );
}

#[tokio::test]
async fn a_new_config_switches_the_labels_and_bumps_the_generation() {
    let (results, cat, _) = mixed_every_frame_stream().await;
    assert_eq!(results[8].config_generation, 1);
    let new_labels: Vec<String> = vec!["a dog".into(), "a cat".into()];
    assert_close(
        &by_index(&results[8].scores, 2),
        &expected(&cat, &new_labels),
    );
}

/// A latest-only stream whose frames come faster than the server takes them drops the ones
/// overtaken by newer frames: every frame is answered or counted as skipped, in order, and the
/// freshest is always answered.
///
/// "Faster" is measured: one frame alone first (a large JPEG's decode, then a pass), then frames
/// sent on a timer four times as fast. A server that read a frame only once it was done with the
/// one before would make the client wait instead, and drop nothing.
#[tokio::test]
async fn a_latest_only_stream_drops_stale_frames_under_a_slow_consumer() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let big = asset("coffee_2000x1500.jpg");
    let alone = {
        let requests = vec![
            config(&LABELS, pb::DeliveryMode::LatestOnly),
            frame(0, big.clone()),
        ];
        let results: Vec<_> = client
            .stream(tokio_stream::iter(requests))
            .await
            .expect("stream")
            .into_inner()
            .map(|r| r.expect("result"))
            .collect()
            .await;
        let t = results[0].timings.expect("timings");
        Duration::from_micros(t.preprocess_us + t.inference_us)
    };
    let every = (alone / 4).max(Duration::from_millis(1));
    let sent = 30u64;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let sending = async move {
        tx.send(config(&LABELS, pb::DeliveryMode::LatestOnly))
            .await
            .unwrap();
        let mut tick = tokio::time::interval(every);
        for id in 0..sent {
            tick.tick().await;
            tx.send(frame(id, big.clone()))
                .await
                .expect("the stream takes frames");
        }
    };
    let receiving = async {
        client
            .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner()
            .map(|r| r.expect("result"))
            .collect::<Vec<_>>()
            .await
    };
    let ((), results) = tokio::join!(sending, receiving);
    let skipped: u64 = results.iter().map(|r| r.skipped_frames).sum();
    eprintln!("latest-only: a frame every {every:?}, {alone:?} to process one, {skipped} dropped");
    assert_eq!(
        results.len() as u64 + skipped,
        sent,
        "every frame is answered or counted as skipped"
    );
    assert!(results.windows(2).all(|w| w[0].frame_id < w[1].frame_id));
    assert_eq!(
        results.last().unwrap().frame_id,
        sent - 1,
        "the freshest frame is always answered"
    );
    assert!(
        skipped > 0,
        "no frame was dropped: {} results; a frame alone took {alone:?} to process and they came \
         every {every:?}",
        results.len()
    );
}

/// The flags of the tests of the protocol, the stream limit and the lifetime: one stream at a
/// time, for two seconds at most.
const ONE_STREAM_FOR_TWO_SECONDS: [&str; 4] = ["--max-streams", "1", "--max-stream-seconds", "2"];

#[tokio::test]
async fn a_frame_before_the_config_is_refused() {
    let server = Server::ready(&ONE_STREAM_FOR_TWO_SECONDS).await;
    let mut client = server.client().await;
    let cat = asset("chelsea_progressive.jpg");
    let mut out = client
        .stream(tokio_stream::iter(vec![frame(0, cat)]))
        .await
        .expect("stream opens")
        .into_inner();
    let status = out
        .next()
        .await
        .expect("an item")
        .expect_err("frame before config");
    assert_status(
        "frame before config",
        &status,
        Code::InvalidArgument,
        "first message",
    );
}

#[tokio::test]
async fn every_stream_protocol_violation_ends_the_stream_with_its_status() {
    let server = Server::ready(&ONE_STREAM_FOR_TWO_SECONDS).await;
    let mut client = server.client().await;
    let cat = asset("chelsea_progressive.jpg");
    let both = pb::StreamRequest {
        msg: Some(Msg::Frame(pb::Frame {
            frame_id: 3,
            image: encoded(cat.clone()),
            chunk: cat[..10].to_vec(),
            ..Default::default()
        })),
    };
    let violations: Vec<(&str, Vec<pb::StreamRequest>, &str)> = vec![
        (
            "image and chunk",
            vec![config(&LABELS, pb::DeliveryMode::EveryFrame), both],
            "both image and chunk",
        ),
        (
            "empty frame",
            vec![
                config(&LABELS, pb::DeliveryMode::EveryFrame),
                frame_chunk(4, &[], false),
            ],
            "neither",
        ),
        (
            "unfinished frame",
            vec![
                config(&LABELS, pb::DeliveryMode::EveryFrame),
                frame_chunk(5, &cat[..10], false),
            ],
            "before frame 5 was complete",
        ),
        (
            "interleaved chunks",
            vec![
                config(&LABELS, pb::DeliveryMode::EveryFrame),
                frame_chunk(5, &cat[..10], false),
                frame_chunk(6, &cat[..10], true),
            ],
            "before frame 5 was complete",
        ),
        (
            "mode change",
            vec![
                config(&LABELS, pb::DeliveryMode::EveryFrame),
                config(&LABELS, pb::DeliveryMode::LatestOnly),
            ],
            "mode cannot change",
        ),
        (
            "empty labels",
            vec![config(&[], pb::DeliveryMode::EveryFrame)],
            "no texts",
        ),
    ];
    for (name, messages, needle) in violations {
        let mut out = client
            .stream(tokio_stream::iter(messages))
            .await
            .expect(name)
            .into_inner();
        let status = loop {
            match out.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => break status,
                None => panic!("{name}: stream ended without an error"),
            }
        };
        assert_status(name, &status, Code::InvalidArgument, needle);
    }
}

#[tokio::test]
async fn a_stream_over_the_limit_is_refused_at_once() {
    let server = Server::ready(&ONE_STREAM_FOR_TWO_SECONDS).await;
    let mut client = server.client().await;
    // One stream open (a client that keeps its side open), a second is refused at once.
    let (_tx, _first) = open_stream(&mut client, asset("chelsea_progressive.jpg")).await;
    let second = client
        .stream(tokio_stream::iter(vec![config(
            &LABELS,
            pb::DeliveryMode::EveryFrame,
        )]))
        .await;
    let refused = match second {
        Err(status) => status,
        Ok(response) => match response.into_inner().next().await {
            Some(Err(status)) => status,
            other => panic!("a second stream was not refused: {other:?}"),
        },
    };
    assert_status(
        "second stream over --max-streams",
        &refused,
        Code::ResourceExhausted,
        "--max-streams",
    );
}

#[tokio::test]
async fn a_stream_ends_with_unavailable_at_its_lifetime() {
    let server = Server::ready(&ONE_STREAM_FOR_TWO_SECONDS).await;
    let mut client = server.client().await;
    // The open stream ends at its maximum lifetime, with a status that says to reconnect.
    let opened = Instant::now();
    let (tx, mut first) = open_stream(&mut client, asset("chelsea_progressive.jpg")).await;
    let end = first
        .next()
        .await
        .expect("end")
        .expect_err("lifetime status");
    assert_status(
        "stream lifetime",
        &end,
        Code::Unavailable,
        "maximum lifetime",
    );
    assert!(opened.elapsed() >= Duration::from_millis(1500));
    drop(tx);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_frees_its_slot() {
    // Streams live as long as by default here (half an hour): only the disconnect can free the
    // slot within the ten seconds allowed below.
    let server = Server::ready(&["--max-streams", "1"]).await;
    let mut client = server.client().await;
    let cat = asset("chelsea_progressive.jpg");
    // A client opens a stream, sends half a frame and goes away: the next stream is accepted.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(config(&LABELS, pb::DeliveryMode::EveryFrame))
        .await
        .unwrap();
    tx.send(frame_chunk(9, &cat[..100], false)).await.unwrap();
    let mut abandoned = server.client().await;
    let response = abandoned
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream");
    drop(response);
    drop(abandoned);
    drop(tx);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let messages = vec![
            config(&LABELS, pb::DeliveryMode::EveryFrame),
            frame(10, cat.clone()),
        ];
        match client.stream(tokio_stream::iter(messages)).await {
            Ok(response) => match response.into_inner().next().await.expect("an item") {
                Ok(result) => {
                    assert_eq!(result.frame_id, 10);
                    break;
                }
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
            },
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
        assert!(
            Instant::now() < until,
            "the disconnected stream's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
