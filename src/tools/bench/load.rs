//! The Classify phases: a closed loop (callers back to back) and an open loop (requests at a
//! fixed rate, whatever the answers), each tallied into a [`Phase`].

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::Mutex;

use super::Workload;
use crate::grpc::pb;
use crate::tools::client::Client;
use crate::tools::stats::{percentiles, Percentiles};

/// One load phase, as the callers saw it and as the server reported it in each response's
/// timings (where the time of a slow request went: waiting for the batch, decoding, or the model).
#[derive(Debug, Default, Serialize)]
pub struct Phase {
    /// Requests per second sent (open loop only).
    pub offered_req_s: Option<f64>,
    pub img_s: f64,
    pub latency_ms: Percentiles,
    pub queue_ms: Percentiles,
    pub preprocess_ms: Percentiles,
    pub inference_ms: Percentiles,
    /// Requests by the size of the forward pass that served them.
    pub batch_sizes: BTreeMap<u32, u64>,
    /// Mean inference time of those requests, by the same batch size (ms).
    pub inference_ms_by_batch: BTreeMap<u32, f64>,
    pub errors: u64,
}

impl Phase {
    pub(super) fn print(&self, name: &str) {
        let offered = self
            .offered_req_s
            .map_or(String::new(), |r| format!("{r:.2} req/s offered  "));
        println!(
            "{name:<13} {offered}{:>8.2} img/s  latency p50 {:>7.1} p95 {:>7.1} p99 {:>7.1} ms  errors {}",
            self.img_s, self.latency_ms.p50, self.latency_ms.p95, self.latency_ms.p99, self.errors
        );
        for (part, p) in [
            ("queue", self.queue_ms),
            ("preprocess", self.preprocess_ms),
            ("inference", self.inference_ms),
        ] {
            println!(
                "{:<13}   server {part:<10} p50 {:>7.1} p95 {:>7.1} p99 {:>7.1} ms",
                "", p.p50, p.p95, p.p99
            );
        }
        println!("{:<13}   batch sizes {:?}", "", self.batch_sizes);
    }
}

/// What the callers of one phase recorded.
#[derive(Default)]
pub(super) struct Tally {
    done: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
    queue_ms: Vec<f64>,
    preprocess_ms: Vec<f64>,
    inference_ms: Vec<f64>,
    batch_sizes: BTreeMap<u32, u64>,
    inference_ms_by_batch: BTreeMap<u32, f64>,
    elapsed: Duration,
}

impl Tally {
    fn record(
        &mut self,
        started: Instant,
        result: Result<tonic::Response<pb::ClassifyResponse>, tonic::Status>,
    ) {
        match result {
            Ok(response) => {
                self.done += 1;
                self.latencies_ms
                    .push(started.elapsed().as_secs_f64() * 1e3);
                let t = response.into_inner().timings.unwrap_or_default();
                self.queue_ms.push(t.queue_us as f64 / 1e3);
                self.preprocess_ms.push(t.preprocess_us as f64 / 1e3);
                self.inference_ms.push(t.inference_us as f64 / 1e3);
                *self.batch_sizes.entry(t.batch_size).or_default() += 1;
                *self.inference_ms_by_batch.entry(t.batch_size).or_default() +=
                    t.inference_us as f64 / 1e3;
            }
            Err(_) => self.errors += 1,
        }
    }

    pub(super) fn into_phase(self, offered_req_s: Option<f64>) -> Phase {
        Phase {
            offered_req_s,
            img_s: self.done as f64 / self.elapsed.as_secs_f64(),
            latency_ms: percentiles(self.latencies_ms),
            queue_ms: percentiles(self.queue_ms),
            preprocess_ms: percentiles(self.preprocess_ms),
            inference_ms: percentiles(self.inference_ms),
            inference_ms_by_batch: self
                .inference_ms_by_batch
                .into_iter()
                .map(|(size, sum)| (size, sum / self.batch_sizes[&size].max(1) as f64))
                .collect(),
            batch_sizes: self.batch_sizes,
            errors: self.errors,
        }
    }
}

/// Waits for every caller, then returns what they recorded.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tally: Arc<Mutex<Tally>>,
    started: Instant,
) -> Tally {
    for task in tasks {
        let _ = task.await;
    }
    let mut tally = std::mem::take(&mut *tally.lock().await);
    tally.elapsed = started.elapsed();
    tally
}

/// `callers` callers, each sending its next request as soon as the last is answered.
pub(super) async fn closed_loop(
    client: &Client,
    workload: &Arc<Workload>,
    callers: usize,
    duration: Duration,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (mut client, workload, tally) =
                (client.clone(), Arc::clone(workload), Arc::clone(&tally));
            tokio::spawn(async move {
                let mut i = caller;
                while started.elapsed() < duration {
                    let t = Instant::now();
                    let result = client.classify(workload.request(i)).await;
                    tally.lock().await.record(t, result);
                    i += callers;
                }
            })
        })
        .collect();
    gather(tasks, tally, started).await
}

/// A request every 1 / `rate` seconds, each on its own task, answered or not.
pub(super) async fn open_loop(
    client: &Client,
    workload: &Arc<Workload>,
    rate: f64,
    duration: Duration,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut ticker = tokio::time::interval(interval);
    let mut tasks = Vec::new();
    let mut i = 0;
    while started.elapsed() < duration {
        ticker.tick().await;
        let (mut client, workload, tally) =
            (client.clone(), Arc::clone(workload), Arc::clone(&tally));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let result = client.classify(workload.request(i)).await;
            tally.lock().await.record(t, result);
        }));
        i += 1;
    }
    gather(tasks, tally, started).await
}
