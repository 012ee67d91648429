//! Fair sharing: streams that together offer more frames than the model can take each get
//! their share, whatever rate they offer. `make bench` measures the same on its own machine
//! (the "fair share" phase); here the bound is loose enough for a busy 2-core machine.

use std::time::{Duration, Instant};

use siglip_serve::grpc::pb::{self, stream_request::Msg};
use tokio_stream::StreamExt;

use crate::common::{asset, server::Server};
use crate::{config, encoded, LABELS};

/// Offers frames at `fps` (real time, with matching timestamps) for `run`, and counts the
/// results that arrive between `warm_up` and `run`. Also returns the frames dropped as
/// superseded over the whole stream.
async fn offer(server: &Server, fps: f64, warm_up: Duration, run: Duration) -> (u64, u64) {
    let mut client = server.client().await;
    let photo = asset("astronaut_224.jpg");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(config(&LABELS, pb::DeliveryMode::LatestOnly))
        .await
        .unwrap();
    let mut results = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / fps));
        for id in 0.. {
            tick.tick().await;
            let at = started.elapsed();
            if at >= run {
                break;
            }
            let frame = pb::StreamRequest {
                msg: Some(Msg::Frame(pb::Frame {
                    frame_id: id,
                    timestamp_us: at.as_micros() as i64,
                    image: encoded(photo.clone()),
                    ..Default::default()
                })),
            };
            if tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    let (mut counted, mut superseded) = (0, 0);
    while let Some(r) = results.next().await {
        let r = r.expect("result");
        superseded += r.dropped.unwrap().superseded;
        let at = started.elapsed();
        if !r.scores.is_empty() && at >= warm_up && at < run {
            counted += 1;
        }
    }
    sender.await.unwrap();
    (counted, superseded)
}

/// Three latest-only streams offering 60, 120 and 240 frames per second, all more than the
/// model (and the decoding pool) can take on a small CPU: each stream's result rate is within
/// 40% of the mean.
#[tokio::test]
async fn streams_at_unequal_rates_get_equal_shares() {
    let server = Server::ready(&[]).await;
    let (warm_up, run) = (Duration::from_secs(2), Duration::from_secs(8));
    let (a, b, c) = tokio::join!(
        offer(&server, 60.0, warm_up, run),
        offer(&server, 120.0, warm_up, run),
        offer(&server, 240.0, warm_up, run),
    );
    let counts = [a.0, b.0, c.0];
    let mean = counts.iter().sum::<u64>() as f64 / 3.0;
    assert!(mean >= 10.0, "too few results to judge: {counts:?}");
    for (i, (counted, superseded)) in [a, b, c].into_iter().enumerate() {
        assert!(
            superseded > 0,
            "stream {i} offered more than its share: {counts:?}"
        );
        let ratio = counted as f64 / mean;
        assert!(
            (0.6..=1.4).contains(&ratio),
            "stream {i}: {counted} results, {ratio:.2} of the mean ({counts:?})"
        );
    }
}
