//! Fair sharing, judged against what this server measured in the same run, never against a
//! guess about the machine:
//! - streams that offer frames at unequal rates each get a max-min fair share of the capacity
//!   measured just before;
//! - a caller that arrives while other flows have long backlogs is answered within one round of
//!   the flows ahead of it.
//!
//! A first-come-first-served queue passes the first (a latest-only stream never has more than one
//! frame waiting, so arrival order alone shares evenly) and fails the second by a wide margin: the
//! second is what the fair queue is for.
//!
//! `make bench` measures shares on its own machine (the "fair share" phase).

use std::time::{Duration, Instant};

use siglip_serve::grpc::pb::{self, siglip_client::SiglipClient, stream_request::Msg};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tonic::transport::Channel;

use crate::common::{
    asset, generated,
    server::{time_well_behaved, Server},
    slowest_of,
};
use crate::{config, encoded, LABELS};

type Client = SiglipClient<Channel>;

/// How a test stream's client sends its frames.
#[derive(Clone, Copy)]
enum Pace {
    /// `ahead` frames at first, then one more for each result: with a few in flight the server
    /// always has a frame waiting, even when a round trip takes longer than a pass, so the
    /// stream takes all it can get without flooding the connection.
    Flood { ahead: usize },
    /// Frames at this many per second of real time.
    Fps(f64),
}

/// What one stream saw between `window.0` and `window.1` (from its start).
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// Frames sent inside the window.
    sent: u64,
    /// Results with scores inside the window.
    results: u64,
    /// Frames dropped as superseded, over the whole stream.
    superseded: u64,
}

fn frame(id: u64, at: Duration, photo: &[u8]) -> pb::StreamRequest {
    pb::StreamRequest {
        msg: Some(Msg::Frame(pb::Frame {
            frame_id: id,
            timestamp_us: at.as_micros() as i64,
            image: encoded(photo.to_vec()),
            ..Default::default()
        })),
    }
}

/// A stream's frames, stamped with real time since the stream began, until the window ends.
struct Frames {
    photo: Vec<u8>,
    started: Instant,
    window: (Duration, Duration),
    next_id: u64,
    /// Frames made inside the window.
    sent: u64,
}

impl Frames {
    fn new(window: (Duration, Duration)) -> Self {
        Self {
            photo: asset("astronaut_224.jpg"),
            started: Instant::now(),
            window,
            next_id: 0,
            sent: 0,
        }
    }

    fn inside(&self) -> bool {
        let at = self.started.elapsed();
        at >= self.window.0 && at < self.window.1
    }

    /// The next frame; none once the window is over.
    fn next(&mut self) -> Option<pb::StreamRequest> {
        let at = self.started.elapsed();
        if at >= self.window.1 {
            return None;
        }
        self.sent += u64::from(self.inside());
        self.next_id += 1;
        Some(frame(self.next_id, at, &self.photo))
    }
}

/// Opens a stream with [`LABELS`] in `mode`: where to send its frames (`room` of them queued
/// in the client), and its results.
async fn open(
    client: &mut Client,
    mode: pb::DeliveryMode,
    room: usize,
) -> (
    mpsc::Sender<pb::StreamRequest>,
    tonic::Streaming<pb::StreamResponse>,
) {
    let (tx, rx) = mpsc::channel(room);
    tx.send(config(&LABELS, mode)).await.unwrap();
    let results = client
        .stream(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    (tx, results)
}

/// One latest-only stream of a small photo, paced by `pace` until `window.1`, counting what
/// happens inside `window` (from the stream's start).
async fn latest_only(mut client: Client, pace: Pace, window: (Duration, Duration)) -> Seen {
    let (tx, mut results) = open(&mut client, pb::DeliveryMode::LatestOnly, 64).await;
    let mut frames = Frames::new(window);
    let mut seen = Seen::default();
    // Flooding, the frames are sent from this loop, one per result; at a rate, by a task.
    let (mut flood, paced) = match pace {
        Pace::Flood { ahead } => {
            for frame in (0..ahead).map_while(|_| frames.next()) {
                tx.send(frame).await.unwrap();
            }
            (Some(tx), None)
        }
        Pace::Fps(fps) => {
            let mut frames = Frames::new(window);
            let task = tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / fps));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(frame) = frames.next() else { break };
                    if tx.send(frame).await.is_err() {
                        break;
                    }
                }
                frames.sent
            });
            (None, Some(task))
        }
    };
    while let Some(r) = results.next().await {
        let r = r.expect("result");
        seen.superseded += r.dropped.unwrap_or_default().superseded;
        if r.scores.is_empty() {
            continue;
        }
        seen.results += u64::from(frames.inside());
        if let Some(tx) = &flood {
            match frames.next() {
                Some(frame) => tx.send(frame).await.unwrap(),
                // Dropping the sender half-closes the stream.
                None => flood = None,
            }
        }
    }
    seen.sent = match paced {
        Some(task) => task.await.unwrap(),
        None => frames.sent,
    };
    seen
}

/// `pace[i]` for stream i, all at once: what each saw in `window`.
async fn streams(server: &Server, pace: &[Pace], window: (Duration, Duration)) -> Vec<Seen> {
    let mut clients = Vec::new();
    for _ in pace {
        clients.push(server.client().await);
    }
    let runs = clients
        .into_iter()
        .zip(pace)
        .map(|(client, pace)| latest_only(client, *pace, window));
    futures_util::future::join_all(runs).await
}

/// Max-min fair shares of `total` among flows that offer `offered`: each flow gets what it offers
/// or the common level, whichever is less, the level chosen so that the shares add up to `total`
/// (flows offering less than the level leave their rest to the others).
fn max_min_shares(offered: &[f64], total: f64) -> Vec<f64> {
    let mut sorted = offered.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut left = total;
    let mut level = f64::INFINITY;
    for (k, o) in sorted.iter().enumerate() {
        let even = left / (sorted.len() - k) as f64;
        if *o >= even {
            level = even;
            break;
        }
        left -= o;
    }
    offered.iter().map(|o| o.min(level)).collect()
}

#[test]
fn max_min_shares_fill_the_small_offers_first() {
    assert_eq!(
        max_min_shares(&[10.0, 40.0, 80.0], 90.0),
        [10.0, 40.0, 40.0]
    );
    assert_eq!(
        max_min_shares(&[50.0, 40.0, 80.0], 90.0),
        [30.0, 30.0, 30.0]
    );
    assert_eq!(max_min_shares(&[5.0, 6.0], 20.0), [5.0, 6.0]);
}

/// Three latest-only streams offering 1.5×, 3× and 6× of an even share of the capacity C, which
/// three flooding streams measured on this server just before: each stream's result rate is its
/// max-min fair share of what they got together, within 25%, and every stream offered far more
/// than it got has frames superseded. The counting window grows on a slow server so that the
/// shares rest on at least ~60 results each.
#[tokio::test]
async fn streams_at_unequal_rates_get_equal_shares() {
    const N: usize = 3;
    let server = Server::ready(&[]).await;
    let second = Duration::from_secs(1);

    let measured = streams(
        &server,
        &[Pace::Flood { ahead: 3 }; N],
        (second, 3 * second),
    )
    .await;
    let capacity = measured.iter().map(|s| s.results).sum::<u64>() as f64 / 2.0;
    assert!(capacity > 0.0, "no results while flooding: {measured:?}");
    let share = capacity / N as f64;
    let counted = Duration::from_secs_f64((60.0 / share).clamp(3.0, 30.0));
    let window = (second, second + counted);

    let pace = [1.5, 3.0, 6.0].map(|k| Pace::Fps(k * share));
    let seen = streams(&server, &pace, window).await;
    let per_s = |n: u64| n as f64 / counted.as_secs_f64();
    let offered: Vec<f64> = seen.iter().map(|s| per_s(s.sent)).collect();
    let got: Vec<f64> = seen.iter().map(|s| per_s(s.results)).collect();
    let fair = max_min_shares(&offered, got.iter().sum());
    let report = format!(
        "capacity {capacity:.1}/s; offered {offered:.1?}/s, got {got:.1?}/s, \
         max-min fair {fair:.1?}/s; {seen:?}"
    );
    eprintln!("fair shares: {report}");
    // Sized for ~60 results a stream at the capacity just measured: a quarter of that is the
    // least that can be judged (and a server that stopped answering is no fair share).
    assert!(
        seen.iter().all(|s| s.results >= 15),
        "too few results to judge: {report}"
    );
    for i in 0..N {
        assert!(
            (got[i] - fair[i]).abs() <= 0.25 * fair[i],
            "stream {i} is not within 25% of its fair share: {report}"
        );
        if offered[i] > 1.25 * got[i] {
            assert!(
                seen[i].superseded > 0,
                "stream {i} got less than it offered, yet dropped nothing: {report}"
            );
        }
    }
    // The two fastest streams offered at least 3 × C/N: had they not been held to a share,
    // they would have taken more than the whole capacity.
    assert!(
        offered[2] > 1.25 * got[2] && offered[1] > 1.25 * got[1],
        "the fast streams were not held to a share: {report}"
    );
}

/// One every-frame stream keeping the server's whole pipeline for it full: frames are sent as
/// fast as the server reads them, and results are read as they come. Runs until aborted.
async fn backlog(mut client: Client) {
    let photo = asset("astronaut_224.jpg");
    let (tx, mut results) = open(&mut client, pb::DeliveryMode::EveryFrame, 1).await;
    let started = Instant::now();
    tokio::spawn(async move {
        for id in 0.. {
            if tx.send(frame(id, started.elapsed(), &photo)).await.is_err() {
                break;
            }
        }
    });
    while let Some(r) = results.next().await {
        r.expect("result");
    }
}

/// Mean time of a vision pass so far (from the server's own inference histogram).
async fn vision_pass(server: &Server) -> (f64, f64) {
    let sum = server
        .metric(r#"siglip_inference_duration_seconds_sum{tower="vision"}"#)
        .await;
    let count = server
        .metric(r#"siglip_inference_duration_seconds_count{tower="vision"}"#)
        .await;
    (sum, count)
}

/// Three every-frame streams keep 3 × 16 frames queued on the slow model, 2 images a batch: a
/// first-come-first-served queue would make a new caller wait 24 batches. Served by flow in turn,
/// a Classify waits at most for the batch running when it arrives, one batch for every two flows
/// ahead of it in the ring, and its own batch: 2 + 2 batches, plus twice its idle latency for
/// everything else, with the batch time and the idle latency both measured in this run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_is_answered_within_a_round_of_the_flows_ahead_of_it() {
    const STREAMS: usize = 3;
    const BATCH: usize = 2;
    const PIPELINE: usize = 16;
    let server = Server::ready_model(
        &generated("SIGLIP_TEST_SLOW_MODEL_DIR"),
        &[
            "--max-batch-size",
            &BATCH.to_string(),
            "--stream-pipeline",
            &PIPELINE.to_string(),
        ],
        &[],
    )
    .await;
    // Also caches the labels' embeddings, which the streams use too.
    let idle = server.idle_latency(3).await;

    let (sum0, count0) = vision_pass(&server).await;
    let mut flood = Vec::new();
    for _ in 0..STREAMS {
        flood.push(tokio::spawn(backlog(server.client().await)));
    }
    let full = STREAMS * (PIPELINE - 1);
    crate::common::wait_until("the streams' frames queued", async || {
        server.metric("siglip_queue_depth").await >= full as f64
    })
    .await;

    let mut client = server.client().await;
    let slowest = slowest_of(2, async || {
        time_well_behaved(&mut client).await;
    })
    .await;
    let (sum1, count1) = vision_pass(&server).await;
    for stream in flood {
        stream.abort();
    }
    let batch = Duration::from_secs_f64((sum1 - sum0) / (count1 - count0).max(1.0));
    let rounds = 1 + STREAMS.div_ceil(BATCH) + 1;
    let bound = idle * 2 + batch * rounds as u32;
    eprintln!("under the flood: {slowest:?}; idle {idle:?}, batch {batch:?}, bound {bound:?}");
    assert!(
        slowest <= bound,
        "a call under the flood took {slowest:?}, more than 2 × idle ({idle:?}) + {rounds} \
         batches of {batch:?} = {bound:?}: it waited behind more than one round of the flows"
    );
}
