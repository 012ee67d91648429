//! The two-model phase (`--models A B`): what each model of one server does alone, and how long a
//! caller of B waits while A is flooded. Models on one device take turns one batch at a time
//! (`batch::turns`), each with its own queue: B's caller should wait at most for the batch of A
//! that is running, then its own (2 × B's idle latency + one batch of A: the figure printed is
//! B's slowest call over that bound).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{load, Workload};
use crate::tools::client::Client;
use crate::tools::stats::{percentiles, Percentiles};

#[derive(Debug, Default, Serialize)]
pub struct ModelsReport {
    /// The two models, A (flooded) and B (the caller).
    pub names: [String; 2],
    /// Each model's closed-loop images/s with the other idle.
    pub img_s: [f64; 2],
    /// B's calls one after the other with nothing else running (ms).
    pub b_idle_ms: Percentiles,
    /// B's calls one after the other during A's flood (ms).
    pub b_flooded_ms: Percentiles,
    /// The slowest of them.
    pub b_flooded_max_ms: f64,
    /// The longest inference of A's batches during the flood, as the server reported it (ms).
    pub a_batch_ms: f64,
    /// 2 × B's slowest idle call + A's longest batch (ms).
    pub bound_ms: f64,
    /// B's slowest flooded call / the bound: at most 1 when models are served fairly.
    pub fairness: f64,
    /// A's images/s during the flood.
    pub a_flooded_img_s: f64,
}

impl ModelsReport {
    pub(super) fn print(&self) {
        let [a, b] = &self.names;
        for (name, img_s) in self.names.iter().zip(self.img_s) {
            println!("model {name:<12} alone {img_s:>8.2} img/s");
        }
        println!(
            "models        {b} idle p50 {:.1} p99 {:.1} ms; under {a}'s flood ({:.2} img/s) p50 \
             {:.1} max {:.1} ms; bound 2 × idle + one {a} batch ({:.1} ms) = {:.1} ms; \
             fairness {:.2} (≤ 1: fair)",
            self.b_idle_ms.p50,
            self.b_idle_ms.p99,
            self.a_flooded_img_s,
            self.b_flooded_ms.p50,
            self.b_flooded_max_ms,
            self.a_batch_ms,
            self.bound_ms,
            self.fairness
        );
    }
}

/// Runs the phase: `callers` callers for `phase` on each model alone, B's idle latency, then
/// B's calls one after the other under `callers` flooding A for `phase`.
pub(super) async fn run(
    client: &Client,
    workload: &Workload,
    [a, b]: [&String; 2],
    callers: usize,
    phase: Duration,
) -> anyhow::Result<ModelsReport> {
    let on_a = Arc::new(workload.for_model(a));
    let on_b = Arc::new(workload.for_model(b));
    // Warm each model's text cache and first calls; not measured.
    for w in [&on_a, &on_b] {
        for i in 0..3 {
            client.clone().classify(w.request(i)).await?;
        }
    }
    let mut img_s = [0.0; 2];
    for (k, w) in [&on_a, &on_b].into_iter().enumerate() {
        img_s[k] = load::closed_loop(client, w, callers, phase)
            .await
            .into_phase(None)
            .img_s;
    }
    let mut idle = Vec::new();
    for i in 0..20 {
        idle.push(timed(client, &on_b, i).await?);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (a_done, a_batch_us) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flood: Vec<_> = (0..callers)
        .map(|caller| {
            let (mut client, w) = (client.clone(), Arc::clone(&on_a));
            let (stop, done, batch) = (stop.clone(), a_done.clone(), a_batch_us.clone());
            tokio::spawn(async move {
                let mut i = caller;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(reply) = client.classify(w.request(i)).await {
                        let t = reply.into_inner().timings.unwrap_or_default();
                        batch.fetch_max(t.inference_us, Ordering::Relaxed);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += callers;
                }
            })
        })
        .collect();
    // The flood's first round fills A's queue: not measured.
    while a_done.load(Ordering::Relaxed) < callers as u64 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (started, before) = (Instant::now(), a_done.load(Ordering::Relaxed));
    let mut flooded = Vec::new();
    let mut i = 0;
    while started.elapsed() < phase {
        flooded.push(timed(client, &on_b, i).await?);
        i += 1;
    }
    let a_flooded_img_s =
        (a_done.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        let _ = task.await;
    }

    let idle_max = idle.iter().copied().fold(0.0, f64::max);
    let flooded_max = flooded.iter().copied().fold(0.0, f64::max);
    let a_batch_ms = a_batch_us.load(Ordering::Relaxed) as f64 / 1e3;
    let bound_ms = 2.0 * idle_max + a_batch_ms;
    Ok(ModelsReport {
        names: [a.clone(), b.clone()],
        img_s,
        b_idle_ms: percentiles(idle),
        b_flooded_ms: percentiles(flooded),
        b_flooded_max_ms: flooded_max,
        a_batch_ms,
        bound_ms,
        fairness: flooded_max / bound_ms,
        a_flooded_img_s,
    })
}

/// One Classify of `workload`'s `i`-th photo: its latency in ms.
async fn timed(client: &Client, workload: &Workload, i: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    client.clone().classify(workload.request(i)).await?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}
