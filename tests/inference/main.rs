//! Inference below the API, without a server: the queue that batches callers' rows for the
//! model (`batcher`), what it does when libtorch fails (`faults`) and the core that decodes,
//! caches and bounds what it admits (`infer`).
//!
//! One test binary (each links libtorch); the helpers both modules use are here.

#[path = "../common/mod.rs"]
mod common;

mod batcher;
mod faults;
mod infer;

use std::time::Duration;

use siglip_serve::batch::{BatchConfig, Batcher, Site};
use siglip_serve::model::Model;

fn model() -> Model {
    common::cpu_model("SIGLIP_TEST_MODEL_DIR")
}

/// The queue in front of `model`, moved onto an inference thread of its own. The tests load
/// their models on the test thread, which the server does not (`Batcher::load`): that costs
/// speed (a second pool of libtorch threads), never a result.
fn start(model: Model, config: BatchConfig) -> (Batcher, std::thread::JoinHandle<()>) {
    let (batcher, (), worker) = Batcher::load(
        Site::alone("tiny"),
        move || Ok(model),
        move |_| Ok((config, ())),
    )
    .expect("the worker starts");
    (batcher, worker)
}

fn config(max_batch_size: usize, delay_ms: u64, queue: usize) -> BatchConfig {
    BatchConfig {
        max_batch_size,
        max_batch_delay: Duration::from_millis(delay_ms),
        queue_capacity: queue,
        pipelined: false,
    }
}

/// Embedding rows equal within float32 noise (batches of other sizes round differently).
fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(max < 1e-5, "rows differ by {max}");
}

/// Ends a test's inference thread: drops `queue` (the last handle to its queue: a `Batcher`,
/// or the `Infer` that owns it) and waits for the thread to exit, so that no libtorch work is
/// still running when the test binary exits (libtorch's static destructors under a running
/// thread crash the process now and then).
async fn stop(queue: impl Sized, worker: std::thread::JoinHandle<()>) {
    drop(queue);
    common::wait_until("the inference thread ending", async || worker.is_finished()).await;
    worker.join().expect("the inference thread ended cleanly");
}
