//! The inference queue and its worker: one bounded queue for every caller, one thread that owns
//! the model and runs it in batches (as Triton's dynamic batcher does).
//!
//! libtorch calls block, so they never run on the async runtime: callers enqueue a [`Job`] and
//! await a oneshot reply. The worker takes the first waiting job, then keeps collecting until the
//! batch holds `max_batch_size` rows or `max_batch_delay` has passed, drops jobs whose caller has
//! gone, whose deadline has passed or whose frame has gone stale, and runs each tower once per
//! batch. The queue serves callers' [`Flow`]s in turn (`fair`): one video stream cannot fill a
//! batch while another waits.
//!
//! On a GPU the worker overlaps batches (`pipelined`): while one batch's vision pass runs on the
//! device, it collects the next batch and copies its pixels into host memory (over 100 MB for 64
//! so400m images), then answers the first batch and queues the second, so that the GPU does not
//! wait for the host between batches.
//!
//! A pass that runs out of memory is run again in halves, down to single rows, so that only the
//! rows that fail even alone get the error. The worker counts batches in which nothing succeeded,
//! one after the other, and publishes the count (see `health`): a device that keeps failing must
//! not look healthy.

mod fair;
mod job;
mod settle;
mod turns;
mod worker;

use std::{
    cell::Cell,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use ::metrics::gauge;
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{image::Pixels, scores::Embeddings, tokenizer::TokenIds, Model};
use fair::{FairQueue, Refused};
pub use job::Tag;
use job::{Job, Work};
use worker::Worker;

pub use fair::Flow;
pub use turns::{DeviceTurn, Devices};

/// The name of the inference thread. The intra-op threads libtorch starts from it inherit it, so
/// the model's CPU can be read per thread name (`tools::cost`).
pub const INFERENCE_THREAD: &str = "siglip-infer";

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most images (or texts) in one forward pass.
    pub max_batch_size: usize,
    /// Longest a job waits for others to join its batch.
    pub max_batch_delay: Duration,
    /// Jobs that may wait; one more is refused at once.
    pub queue_capacity: usize,
    /// Prepare the next batch while the current one runs (for devices that run asynchronously:
    /// [`Model::runs_asynchronously`]).
    pub pipelined: bool,
}

/// What a caller gets back: its own rows, and where the time went.
#[derive(Debug)]
pub struct Reply {
    pub embeddings: Embeddings,
    pub queue: Duration,
    pub inference: Duration,
    /// Rows in the forward pass that computed this caller's rows (the largest, if several).
    pub batch_size: usize,
}

/// Whose queue this is and where it stands among others: the model's name (the `model` label of
/// the queue's and batches' metrics) and the turns of the devices it may share with other
/// models' queues.
#[derive(Clone)]
pub struct Site {
    pub model: Arc<str>,
    pub devices: Arc<Devices>,
}

impl Site {
    /// A queue with a device of its own (tools and tests): labelled with `model`.
    pub fn alone(model: &str) -> Self {
        Self {
            model: model.into(),
            devices: Arc::default(),
        }
    }
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    producer: Arc<Producer>,
    failures: watch::Receiver<u32>,
}

/// The callers' side of the queue, shared by every `Batcher` clone: when the last one goes, the
/// queue closes and the worker ends once it has taken what is left.
struct Producer {
    queue: Arc<FairQueue<Job>>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    model: Arc<str>,
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.queue.close();
    }
}

impl Batcher {
    /// Starts the inference thread and loads the model on it with `load` (which also warms it
    /// up), then waits until it has: the queue in front of it, what `setup` made of the model
    /// (its batching, and whatever the caller needs of it), and the thread. The thread ends
    /// when every `Batcher` clone is dropped, or at once if loading or `setup` fails.
    ///
    /// Every libtorch call runs on this one thread, the first included: libgomp gives each
    /// thread that starts parallel work a pool of its own, and once its pools hold more threads
    /// than there are cores it stops spinning between parallel regions, so that a model warmed
    /// up on another thread runs each forward pass markedly slower (a third on 2 cores).
    ///
    /// The thread takes a turn on the model's device (shared with the other models on it, in
    /// `site.devices`) for every batch.
    pub fn load<T: Send + 'static>(
        site: Site,
        load: impl FnOnce() -> Result<Model> + Send + 'static,
        setup: impl FnOnce(&Model) -> Result<(BatchConfig, T)> + Send + 'static,
    ) -> Result<(Self, T, thread::JoinHandle<()>)> {
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        let handle = thread::Builder::new()
            .name(INFERENCE_THREAD.into())
            .spawn(move || {
                let loaded = load()
                    .and_then(|model| setup(&model).map(|(config, out)| (model, config, out)));
                match loaded {
                    Ok((model, config, out)) => {
                        let (batcher, worker) = Self::worker(model, config, site);
                        if ready_tx.send(Ok((batcher, out))).is_ok() {
                            worker.run();
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| Error::Model(format!("cannot start the inference thread: {e}")))?;
        match ready.recv() {
            Ok(loaded) => {
                let (batcher, out) = loaded?;
                Ok((batcher, out, handle))
            }
            // The thread ended without a word: it panicked.
            Err(_) => Err(Error::Model(format!(
                "loading the model panicked: {}",
                panic_message(handle.join())
            ))),
        }
    }

    fn worker(model: Model, config: BatchConfig, site: Site) -> (Self, Worker) {
        let queue = Arc::new(FairQueue::new(config.queue_capacity));
        let depth = Arc::new(AtomicUsize::new(0));
        let (failures_tx, failures) = watch::channel(0);
        let turn = site.devices.turn(&model.running_on().device);
        let worker = Worker {
            model,
            config,
            turn,
            label: Arc::clone(&site.model),
            queue: Arc::clone(&queue),
            depth: Arc::clone(&depth),
            failures: failures_tx,
            in_model: Cell::new(Duration::ZERO),
        };
        let batcher = Self {
            producer: Arc::new(Producer {
                queue,
                depth,
                capacity: config.queue_capacity,
                model: site.model,
            }),
            failures,
        };
        (batcher, worker)
    }

    /// Batches that failed one after the other, up to now (0 after any success): what health
    /// follows (`health::follow`).
    pub fn consecutive_failures(&self) -> watch::Receiver<u32> {
        self.failures.clone()
    }

    /// Jobs waiting for the worker.
    pub fn depth(&self) -> usize {
        self.producer.depth.load(Ordering::Relaxed)
    }

    /// Embeds preprocessed images (as `image::preprocess` writes them, all of one shape), as a
    /// flow of their own.
    pub async fn embed_images(
        &self,
        images: Vec<Pixels>,
        deadline: Option<Instant>,
    ) -> Result<Reply> {
        self.submit(Work::Images(images), Tag::alone(deadline))
            .await
    }

    pub async fn embed_texts(
        &self,
        ids: Vec<TokenIds>,
        deadline: Option<Instant>,
    ) -> Result<Reply> {
        self.submit(Work::Texts(ids), Tag::alone(deadline)).await
    }

    /// Embeds preprocessed images as part of `tag.flow` (one flow per stream, a video stream's
    /// frames or an inference stream's requests, so that streams share the worker in turn). A
    /// job still waiting at `tag.stale_at` gets [`Error::Stale`].
    pub async fn embed_tagged(&self, images: Vec<Pixels>, tag: Tag) -> Result<Reply> {
        self.submit(Work::Images(images), tag).await
    }

    async fn submit(&self, work: Work, tag: Tag) -> Result<Reply> {
        let (reply, rx) = oneshot::channel();
        let job = Job::new(work, &tag, reply);
        let producer = &self.producer;
        queue_depth(&producer.depth, &producer.model, 1);
        match producer.queue.push(tag.flow, job) {
            Ok(()) => {}
            Err(Refused::Full) => {
                queue_depth(&producer.depth, &producer.model, -1);
                return Err(Error::ResourceExhausted(format!(
                    "server overloaded: the inference queue is full ({} jobs waiting, --max-queue); retry with backoff",
                    producer.capacity
                )));
            }
            Err(Refused::Closed) => {
                queue_depth(&producer.depth, &producer.model, -1);
                return Err(Error::Unavailable(
                    "the inference worker has stopped".into(),
                ));
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(Error::Inference(
                "the inference worker dropped the request".into(),
            ))
        })
    }
}

/// What a thread that panicked said, from its `join`.
fn panic_message(joined: thread::Result<()>) -> String {
    match joined {
        Ok(()) => "the thread ended without an answer".into(),
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into()),
    }
}

/// Moves the queue-depth counter and its gauge together. The gauge moves by the same delta
/// rather than being set to the new count: callers and the worker update it from different
/// threads, and a late `set` could leave it stale.
fn queue_depth(depth: &AtomicUsize, model: &Arc<str>, delta: isize) {
    let gauge = gauge!(metrics::QUEUE_DEPTH, "model" => Arc::clone(model));
    if delta >= 0 {
        depth.fetch_add(delta as usize, Ordering::Relaxed);
        gauge.increment(delta as f64);
    } else {
        depth.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        gauge.decrement(delta.unsigned_abs() as f64);
    }
}
