//! Tracing's cost (`--traced-addr`): Classify on a server exporting every call's spans (ratio
//! 1.0) to an OTLP receiver in this process, against the same model on a server with tracing
//! off, the same photos, labels and concurrency, in the same run. The two alternate in four
//! turns (off, on, off, on) of half a phase each, so that a drift in the machine's speed falls
//! on both alike; only one of them has load at a time.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde::Serialize;

use super::oip::{closed_loop, counted};
use super::Workload;
use crate::tools::client::Client;
use crate::tools::otlp_sink::OtlpSink;

#[derive(Debug, Default, Serialize)]
pub struct TracingReport {
    /// The servers' dtype.
    pub dtype: String,
    pub off_img_s: f64,
    pub on_img_s: f64,
    /// How much less the traced server served, in percent (negative: more).
    pub cost_pct: f64,
    /// Spans the receiver got from the traced server over the run, per call it answered.
    pub spans_per_call: f64,
    pub errors: u64,
}

impl TracingReport {
    pub(super) fn print(&self) {
        println!(
            "tracing       on (ratio 1.0) {:.2} img/s vs off {:.2} img/s, same run: cost {:+.1}% \
             (target ≤ 3%)  {:.1} spans per call exported  errors {}",
            self.on_img_s, self.off_img_s, self.cost_pct, self.spans_per_call, self.errors
        );
    }
}

pub(super) async fn run(
    off: &Client,
    on: &Client,
    sink_addr: SocketAddr,
    workload: &Arc<Workload>,
    dtype: &str,
    callers: usize,
    phase: Duration,
) -> anyhow::Result<TracingReport> {
    let sink = OtlpSink::start_on(sink_addr, false).await?;
    let errors = Arc::new(AtomicU64::new(0));
    let turn = phase / 2;
    let (mut untraced, mut traced) = ((0, Duration::ZERO), (0, Duration::ZERO));
    for _ in 0..2 {
        let done = classify_turn(off, workload, &errors, callers, turn).await;
        untraced = (untraced.0 + done.0, untraced.1 + done.1);
        let done = classify_turn(on, workload, &errors, callers, turn).await;
        traced = (traced.0 + done.0, traced.1 + done.1);
    }
    // The traced server exports on its schedule (run.sh sets 200 ms): the last spans arrive
    // after its last turn, and some of each turn's during the next untraced one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spans = sink.count();
    let rate = |(n, took): (u64, Duration)| n as f64 / took.as_secs_f64();
    let (off_img_s, on_img_s) = (rate(untraced), rate(traced));
    Ok(TracingReport {
        dtype: dtype.to_string(),
        off_img_s,
        on_img_s,
        cost_pct: 100.0 * (1.0 - on_img_s / off_img_s),
        spans_per_call: spans as f64 / traced.0.max(1) as f64,
        errors: errors.load(Ordering::Relaxed),
    })
}

/// Classify in a closed loop on `client` for `turn`: the calls answered and the time taken.
async fn classify_turn(
    client: &Client,
    workload: &Arc<Workload>,
    errors: &Arc<AtomicU64>,
    callers: usize,
    turn: Duration,
) -> (u64, Duration) {
    let (client, w, e) = (client.clone(), Arc::clone(workload), Arc::clone(errors));
    closed_loop(callers, turn, move |i| {
        let (mut client, w, e) = (client.clone(), Arc::clone(&w), Arc::clone(&e));
        async move { counted(&e, client.classify(w.request(i)).await) }
    })
    .await
}
