//! The inference queue and its worker: one bounded queue for every caller, one thread that owns
//! the model and runs it in batches (as Triton's dynamic batcher does).
//!
//! libtorch calls block, so they never run on the async runtime: callers enqueue a [`Job`] and
//! await a oneshot reply. The worker takes the first waiting job, then keeps collecting until the
//! batch holds `max_batch_size` rows or `max_batch_delay` has passed, drops jobs whose caller has
//! gone or whose deadline has passed, and runs each tower once per batch.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use ::metrics::{counter, gauge, histogram};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{scores::Embeddings, tokenizer::TokenIds, Model};

#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most images (or texts) in one forward pass.
    pub max_batch_size: usize,
    /// Longest a job waits for others to join its batch.
    pub max_batch_delay: Duration,
    /// Jobs that may wait; one more is refused at once.
    pub queue_capacity: usize,
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

enum Work {
    /// Preprocessed images, one CHW row each.
    Images(Vec<Vec<f32>>),
    Texts(Vec<TokenIds>),
}

struct Job {
    work: Work,
    deadline: Option<Instant>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Reply>>,
}

impl Job {
    fn rows(&self) -> usize {
        match &self.work {
            Work::Images(rows) => rows.len(),
            Work::Texts(ids) => ids.len(),
        }
    }

    /// A job nobody waits for any more is dropped; one past its deadline is answered so.
    fn still_wanted(self) -> Option<Self> {
        if self.reply.is_closed() {
            counter!(metrics::REQUESTS_DROPPED, "reason" => "cancelled").increment(1);
            return None;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            counter!(metrics::REQUESTS_DROPPED, "reason" => "deadline").increment(1);
            let waited = self.enqueued.elapsed();
            let _ = self.reply.send(Err(Error::DeadlineExceeded(format!(
                "the request waited {} ms in the queue; it was dropped before inference",
                waited.as_millis()
            ))));
            return None;
        }
        Some(self)
    }
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
}

impl Batcher {
    /// Moves `model` onto a new inference thread and returns the queue in front of it. The thread
    /// ends when every `Batcher` clone is dropped.
    pub fn start(model: Model, config: BatchConfig) -> (Self, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::sync_channel(config.queue_capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            model,
            config,
            rx,
            depth: Arc::clone(&depth),
        };
        let handle = thread::Builder::new()
            .name("siglip-infer".into())
            .spawn(move || worker.run())
            .expect("spawning the inference thread");
        let batcher = Self {
            tx,
            depth,
            capacity: config.queue_capacity,
        };
        (batcher, handle)
    }

    /// Jobs waiting for the worker.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Embeds preprocessed images (CHW rows, as `image::preprocess` writes them).
    pub async fn embed_images(
        &self,
        images: Vec<Vec<f32>>,
        deadline: Option<Instant>,
    ) -> Result<Reply> {
        self.submit(Work::Images(images), deadline).await
    }

    pub async fn embed_texts(
        &self,
        ids: Vec<TokenIds>,
        deadline: Option<Instant>,
    ) -> Result<Reply> {
        self.submit(Work::Texts(ids), deadline).await
    }

    async fn submit(&self, work: Work, deadline: Option<Instant>) -> Result<Reply> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            work,
            deadline,
            enqueued: Instant::now(),
            reply,
        };
        queue_depth(&self.depth, 1);
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                queue_depth(&self.depth, -1);
                return Err(Error::ResourceExhausted(format!(
                    "server overloaded: the inference queue is full ({} jobs waiting, --max-queue); retry with backoff",
                    self.capacity
                )));
            }
            Err(TrySendError::Disconnected(_)) => {
                queue_depth(&self.depth, -1);
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

struct Worker {
    model: Model,
    config: BatchConfig,
    rx: mpsc::Receiver<Job>,
    depth: Arc<AtomicUsize>,
}

impl Worker {
    fn run(self) {
        while let Some(batch) = self.next_batch() {
            let (images, texts): (Vec<Job>, Vec<Job>) = batch
                .into_iter()
                .filter_map(Job::still_wanted)
                .partition(|j| matches!(j.work, Work::Images(_)));
            if !images.is_empty() {
                self.run_images(images);
            }
            if !texts.is_empty() {
                self.run_texts(texts);
            }
        }
    }

    fn take(&self, job: Job) -> Job {
        queue_depth(&self.depth, -1);
        job
    }

    /// Blocks for the first job, then gathers more until the batch is full or the delay is over.
    /// `None` once every sender is gone.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let first = self.take(self.rx.recv().ok()?);
        let close_at = Instant::now() + self.config.max_batch_delay;
        let mut rows = first.rows();
        let mut batch = vec![first];
        while rows < self.config.max_batch_size {
            let wait = close_at.saturating_duration_since(Instant::now());
            let job = match self.rx.recv_timeout(wait) {
                Ok(job) => self.take(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            };
            rows += job.rows();
            batch.push(job);
        }
        Some(batch)
    }

    fn run_images(&self, jobs: Vec<Job>) {
        let rows: Vec<&[f32]> = jobs
            .iter()
            .flat_map(|job| match &job.work {
                Work::Images(rows) => rows.iter().map(Vec::as_slice).collect(),
                Work::Texts(_) => Vec::new(),
            })
            .collect();
        let result = self.chunked(rows.len(), "vision", |start, len| {
            self.model.embed_rows(&rows[start..start + len])
        });
        self.answer(jobs, result);
    }

    fn run_texts(&self, jobs: Vec<Job>) {
        let ids: Vec<TokenIds> = jobs
            .iter()
            .flat_map(|job| match &job.work {
                Work::Texts(ids) => ids.clone(),
                Work::Images(_) => Vec::new(),
            })
            .collect();
        let result = self.chunked(ids.len(), "text", |start, len| {
            self.model.embed_token_ids(&ids[start..start + len])
        });
        self.answer(jobs, result);
    }

    /// Runs `forward` over `n` rows in passes of at most `max_batch_size` (one caller may send
    /// more rows than a batch holds) and concatenates the embeddings.
    fn chunked(
        &self,
        n: usize,
        tower: &'static str,
        forward: impl Fn(usize, usize) -> Result<Embeddings>,
    ) -> (Result<Embeddings>, Duration) {
        let started = Instant::now();
        let step = self.config.max_batch_size.max(1);
        let mut all: Option<Embeddings> = None;
        for start in (0..n).step_by(step) {
            let rows = step.min(n - start);
            let pass = Instant::now();
            let result = forward(start, rows);
            histogram!(metrics::INFERENCE, "tower" => tower).record(pass.elapsed());
            if tower == "vision" {
                histogram!(metrics::BATCH_SIZE).record(rows as f64);
                counter!(metrics::IMAGES).increment(rows as u64);
            } else {
                counter!(metrics::TEXTS).increment(rows as u64);
            }
            match result {
                Ok(e) => match &mut all {
                    Some(acc) => acc.data.extend_from_slice(&e.data),
                    None => all = Some(e),
                },
                Err(e) => return (Err(e), started.elapsed()),
            }
        }
        let result = all.ok_or_else(|| Error::Inference("empty batch".into()));
        (result, started.elapsed())
    }

    /// Hands each job its own rows, in queue order.
    fn answer(&self, jobs: Vec<Job>, (result, inference): (Result<Embeddings>, Duration)) {
        let total: usize = jobs.iter().map(Job::rows).sum();
        let batch_size = total.min(self.config.max_batch_size.max(1));
        let embeddings = match result {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "inference failed");
                let message = match e {
                    Error::Inference(m) => m,
                    other => other.to_string(),
                };
                for job in jobs {
                    let _ = job.reply.send(Err(Error::Inference(message.clone())));
                }
                return;
            }
        };
        let dim = embeddings.dim;
        let mut offset = 0;
        for job in jobs {
            let rows = job.rows();
            let data = embeddings.data[offset * dim..(offset + rows) * dim].to_vec();
            offset += rows;
            let queue = job.enqueued.elapsed().saturating_sub(inference);
            histogram!(metrics::QUEUE_WAIT).record(queue);
            let _ = job.reply.send(Ok(Reply {
                embeddings: Embeddings::new(dim, data),
                queue,
                inference,
                batch_size,
            }));
        }
    }
}

/// Moves the queue-depth counter and its gauge together.
fn queue_depth(depth: &AtomicUsize, delta: isize) {
    let now = if delta >= 0 {
        depth.fetch_add(delta as usize, Ordering::Relaxed) + delta as usize
    } else {
        depth.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed) - delta.unsigned_abs()
    };
    gauge!(metrics::QUEUE_DEPTH).set(now as f64);
}
