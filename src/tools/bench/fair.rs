//! The fair-share phase: streams that together offer more than the server can take, each above
//! its share. Does each still get capacity / N? Each stream's results are counted over a window
//! after a warm-up (which fills the queue and the streams' pipelines).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::ValueEnum;
use serde::Serialize;

use super::Workload;
use crate::grpc::pb;
use crate::tools::client::Client;

/// The delivery mode of the fair-share phase's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FairMode {
    /// Latest-only: a frame that waits while a newer one arrives is dropped.
    Latest,
    /// Every frame, in order, with backpressure.
    Every,
}

impl FairMode {
    fn delivery(self) -> pb::DeliveryMode {
        match self {
            Self::Latest => pb::DeliveryMode::LatestOnly,
            Self::Every => pb::DeliveryMode::EveryFrame,
        }
    }
}

/// Streams that together offer more than the server can take: does each get its share?
#[derive(Debug, Serialize)]
pub struct FairReport {
    pub streams: usize,
    pub mode: FairMode,
    pub offered_fps: Vec<f64>,
    /// Each stream's results per second over the measured window (after the warm-up).
    pub results_per_s: Vec<f64>,
    /// Their sum, C: what the server delivered under this load.
    pub capacity: f64,
    /// The stream furthest from C / streams, in percent of C / streams.
    pub max_deviation_pct: f64,
    /// Jain's index of `results_per_s`: 1 when all are equal, 1 / streams when one takes all.
    pub jain: f64,
    pub warmup_s: f64,
    pub window_s: f64,
}

impl FairReport {
    fn new(
        mode: FairMode,
        offered_fps: Vec<f64>,
        results_per_s: Vec<f64>,
        warmup: Duration,
        window: Duration,
    ) -> Self {
        let n = results_per_s.len() as f64;
        let capacity: f64 = results_per_s.iter().sum();
        let share = capacity / n;
        let worst = results_per_s
            .iter()
            .map(|r| (r - share).abs())
            .fold(0.0, f64::max);
        let squares: f64 = results_per_s.iter().map(|r| r * r).sum();
        Self {
            streams: results_per_s.len(),
            mode,
            offered_fps,
            // Nothing delivered is as unfair as it gets, not a division by zero.
            max_deviation_pct: if share > 0.0 {
                100.0 * worst / share
            } else {
                100.0
            },
            jain: if squares > 0.0 {
                capacity * capacity / (n * squares)
            } else {
                0.0
            },
            results_per_s,
            capacity,
            warmup_s: warmup.as_secs_f64(),
            window_s: window.as_secs_f64(),
        }
    }

    pub(super) fn print(&self) {
        let list = |v: &[f64]| {
            let items: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
            format!("[{}]", items.join(", "))
        };
        println!(
            "fair          {} streams  results/s {}  capacity {:.2}  worst |r_i - C/N| = {:.1}% of C/N  Jain {:.4}",
            self.streams,
            list(&self.results_per_s),
            self.capacity,
            self.max_deviation_pct,
            self.jain
        );
        println!(
            "{:<13}   {:?} delivery, offered {} fps, counted over {:.1} s after {:.1} s of warm-up",
            "",
            self.mode,
            list(&self.offered_fps),
            self.window_s,
            self.warmup_s
        );
    }
}

/// `offered.len()` streams, stream i sending frames at `offered[i]` fps: each stream's results/s
/// between `warmup` and `warmup + window`.
pub(super) async fn run(
    client: &Client,
    workload: &Arc<Workload>,
    mode: FairMode,
    offered: Vec<f64>,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<FairReport> {
    let started = Instant::now();
    let tasks: Vec<_> = offered
        .iter()
        .enumerate()
        .map(|(s, &fps)| {
            let (client, workload) = (client.clone(), Arc::clone(workload));
            tokio::spawn(async move {
                fair_stream(
                    client,
                    workload,
                    s,
                    fps,
                    mode,
                    started,
                    (warmup, warmup + window),
                )
                .await
            })
        })
        .collect();
    let mut results_per_s = Vec::new();
    for task in tasks {
        results_per_s.push(task.await?? as f64 / window.as_secs_f64());
    }
    Ok(FairReport::new(
        mode,
        offered,
        results_per_s,
        warmup,
        window,
    ))
}

/// One stream of the fair-share phase: its results (frames answered without an error) that
/// arrived between `count.0` and `count.1` after `started`. It stops sending at `count.1`.
async fn fair_stream(
    mut client: Client,
    workload: Arc<Workload>,
    seed: usize,
    fps: f64,
    mode: FairMode,
    started: Instant,
    count: (Duration, Duration),
) -> anyhow::Result<u64> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(workload.stream_config(mode.delivery())).await?;
    let mut responses = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let sender = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / fps.max(0.1)));
        // Held back by backpressure (every-frame delivery), a stream goes on at its rate
        // rather than sending a burst to catch up.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut id = 0u64;
        while started.elapsed() < count.1 {
            ticker.tick().await;
            let frame = pb::Frame {
                frame_id: id,
                timestamp_us: started.elapsed().as_micros() as i64,
                image: Some(workload.image(seed + id as usize)),
                ..Default::default()
            };
            let request = pb::StreamRequest {
                msg: Some(pb::stream_request::Msg::Frame(frame)),
            };
            if tx.send(request).await.is_err() {
                break;
            }
            id += 1;
        }
    });
    let mut counted = 0;
    while let Some(response) = responses.message().await? {
        let at = started.elapsed();
        if response.error.is_none() && (count.0..count.1).contains(&at) {
            counted += 1;
        }
    }
    sender.await?;
    Ok(counted)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{FairMode, FairReport};

    fn report(results_per_s: Vec<f64>) -> FairReport {
        let offered = vec![1.0; results_per_s.len()];
        let s = Duration::from_secs(1);
        FairReport::new(FairMode::Latest, offered, results_per_s, s, s)
    }

    #[test]
    fn equal_shares_are_fair() {
        let r = report(vec![10.0, 10.0, 10.0, 10.0]);
        assert_eq!((r.capacity, r.max_deviation_pct, r.jain), (40.0, 0.0, 1.0));
    }

    #[test]
    fn one_stream_taking_all_is_as_unfair_as_it_gets() {
        let r = report(vec![20.0, 0.0]);
        assert_eq!((r.max_deviation_pct, r.jain), (100.0, 0.5));
        let none = report(vec![0.0, 0.0]);
        assert_eq!((none.max_deviation_pct, none.jain), (100.0, 0.0));
    }
}
