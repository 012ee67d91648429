//! The Open Inference Protocol's cost (phase 5): ModelInfer on the zero-shot model against
//! Classify, the same photos and labels, one image per call, at the same concurrency and in the
//! same run. The two alternate in four turns (Classify, ModelInfer, Classify, ModelInfer) of
//! half a phase each, so that a drift in the machine's speed falls on both alike.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use super::Workload;
use crate::grpc::oip::{
    pb::{model_infer_request::InferInputTensor, ModelInferRequest},
    tensors::join_bytes,
};
use crate::tools::client::{Client, OipClient};

#[derive(Debug, Default, Serialize)]
pub struct OipReport {
    /// The OIP model called (`<model>-zero-shot`, or `zero-shot` for the default model).
    pub model: String,
    pub classify_img_s: f64,
    pub model_infer_img_s: f64,
    /// How much less ModelInfer served than Classify, in percent (negative: more).
    pub cost_pct: f64,
    pub errors: u64,
}

impl OipReport {
    pub(super) fn print(&self) {
        println!(
            "oip           ModelInfer {:.2} img/s vs Classify {:.2} img/s, same run: cost {:+.1}% \
             (target ≤ 5%)  errors {}",
            self.model_infer_img_s, self.classify_img_s, self.cost_pct, self.errors
        );
    }
}

pub(super) async fn run(
    client: &Client,
    oip: &OipClient,
    workload: &Arc<Workload>,
    callers: usize,
    phase: Duration,
) -> OipReport {
    let model = match workload.model.as_str() {
        "" => "zero-shot".to_string(),
        model => format!("{model}-zero-shot"),
    };
    let texts = join_bytes(workload.labels.iter().map(|l| l.as_bytes()));
    let errors = Arc::new(AtomicU64::new(0));
    let turn = phase / 2;
    let (mut classify, mut infer) = ((0, Duration::ZERO), (0, Duration::ZERO));
    for _ in 0..2 {
        let (client, w, e) = (client.clone(), Arc::clone(workload), Arc::clone(&errors));
        let done = closed_loop(callers, turn, move |i| {
            let (mut client, w, e) = (client.clone(), Arc::clone(&w), Arc::clone(&e));
            async move { counted(&e, client.classify(w.request(i)).await) }
        })
        .await;
        classify = (classify.0 + done.0, classify.1 + done.1);
        let (oip, w, e) = (oip.clone(), Arc::clone(workload), Arc::clone(&errors));
        let (model, texts) = (model.clone(), texts.clone());
        let done = closed_loop(callers, turn, move |i| {
            let (mut oip, e) = (oip.clone(), Arc::clone(&e));
            let request = zero_shot(
                &model,
                &w.images[i % w.images.len()],
                &texts,
                w.labels.len(),
            );
            async move { counted(&e, oip.model_infer(request).await) }
        })
        .await;
        infer = (infer.0 + done.0, infer.1 + done.1);
    }
    let rate = |(n, took): (u64, Duration)| n as f64 / took.as_secs_f64();
    let (classify_img_s, model_infer_img_s) = (rate(classify), rate(infer));
    OipReport {
        model,
        classify_img_s,
        model_infer_img_s,
        cost_pct: 100.0 * (1.0 - model_infer_img_s / classify_img_s),
        errors: errors.load(Ordering::Relaxed),
    }
}

pub(super) fn counted<T>(errors: &AtomicU64, result: Result<T, tonic::Status>) -> bool {
    if result.is_err() {
        errors.fetch_add(1, Ordering::Relaxed);
    }
    result.is_ok()
}

/// One photo against the labels (`texts`, already framed), as tritonclient sends it: BYTES in
/// `raw_input_contents`.
fn zero_shot(model: &str, image: &[u8], texts: &[u8], labels: usize) -> ModelInferRequest {
    let bytes = |name: &str, n: usize| InferInputTensor {
        name: name.into(),
        datatype: "BYTES".into(),
        shape: vec![n as i64],
        ..Default::default()
    };
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![bytes("IMAGE", 1), bytes("TEXT", labels)],
        raw_input_contents: vec![join_bytes([image]), texts.to_vec()],
        ..Default::default()
    }
}

/// `callers` callers, each making its next call as soon as the last is answered, for
/// `duration`: the calls that succeeded, and the time they took in all.
pub(super) async fn closed_loop<F, Fut>(
    callers: usize,
    duration: Duration,
    call: F,
) -> (u64, Duration)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (call, done) = (call.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                let mut i = caller;
                while started.elapsed() < duration {
                    if call(i).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += callers;
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    (done.load(Ordering::Relaxed), started.elapsed())
}
