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
//! so400m images), then answers the first batch and queues the second. The GPU no longer waits
//! for the host between batches.
//!
//! A pass that runs out of memory is run again in halves, down to single rows, so that only the
//! rows that fail even alone get the error. The worker counts batches in which nothing succeeded,
//! one after the other, and publishes the count (see `health`): a device that keeps failing must
//! not look healthy.

mod fair;

use std::{
    cell::Cell,
    collections::HashSet,
    panic::{self, AssertUnwindSafe},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use ::metrics::{counter, gauge, histogram};
use tokio::sync::{oneshot, watch};

use crate::cpu_time;
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{
    runtime::is_out_of_memory, scores::Embeddings, tokenizer::TokenIds, Model, Pending, Staged,
};
use fair::{FairQueue, Popped, Refused, Wait};

pub use fair::Flow;

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

enum Work {
    /// Preprocessed images, one CHW row each.
    Images(Vec<Vec<f32>>),
    Texts(Vec<TokenIds>),
}

/// What a job carries besides its work: whose it is, and when it is no longer worth running.
#[derive(Debug, Clone, Copy)]
pub struct Tag {
    pub flow: Flow,
    /// Past this, the caller is answered DEADLINE_EXCEEDED instead.
    pub deadline: Option<Instant>,
    /// Past this when the worker takes the job into a batch (inference would start), the job is
    /// answered [`Error::Stale`] and not run: a video frame that is too old to be worth a result.
    pub stale_at: Option<Instant>,
}

impl Tag {
    /// A caller of its own (a unary request), with an optional deadline.
    fn alone(deadline: Option<Instant>) -> Self {
        Self {
            flow: Flow::new(),
            deadline,
            stale_at: None,
        }
    }
}

struct Job {
    work: Work,
    deadline: Option<Instant>,
    stale_at: Option<Instant>,
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

    /// A job nobody waits for any more is dropped; one past its deadline or stale is answered so.
    fn still_wanted(self) -> Option<Self> {
        if self.reply.is_closed() {
            counter!(metrics::REQUESTS_DROPPED, "reason" => "cancelled").increment(1);
            histogram!(metrics::QUEUE_WAIT).record(self.enqueued.elapsed());
            return None;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            counter!(metrics::REQUESTS_DROPPED, "reason" => "deadline").increment(1);
            let waited = self.enqueued.elapsed();
            // The longest waits are these: leaving them out would hide the tail under overload.
            histogram!(metrics::QUEUE_WAIT).record(waited);
            let _ = self.reply.send(Err(Error::DeadlineExceeded(format!(
                "the request waited {} ms in the queue; it was dropped before inference",
                waited.as_millis()
            ))));
            return None;
        }
        let now = Instant::now();
        if let Some(stale_at) = self.stale_at.filter(|&at| now >= at) {
            // Not a dropped request: the stream counts its stale frames itself, by reason.
            let waited = self.enqueued.elapsed();
            histogram!(metrics::QUEUE_WAIT).record(waited);
            let _ = self.reply.send(Err(Error::Stale(format!(
                "the frame waited {} ms in the inference queue and was {} ms past its max_age_ms when inference would have started; it was dropped",
                waited.as_millis(),
                now.duration_since(stale_at).as_millis()
            ))));
            return None;
        }
        Some(self)
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
    pub fn load<T: Send + 'static>(
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
                        let (batcher, worker) = Self::worker(model, config);
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

    fn worker(model: Model, config: BatchConfig) -> (Self, Worker) {
        let queue = Arc::new(FairQueue::new(config.queue_capacity));
        let depth = Arc::new(AtomicUsize::new(0));
        let (failures_tx, failures) = watch::channel(0);
        let worker = Worker {
            model,
            config,
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

    /// Embeds preprocessed images (CHW rows, as `image::preprocess` writes them), as a flow of
    /// their own.
    pub async fn embed_images(
        &self,
        images: Vec<Vec<f32>>,
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

    /// Embeds a video frame's preprocessed rows as part of `tag.flow` (one flow per stream, so
    /// that streams share the worker in turn). A frame still waiting at `tag.stale_at` gets
    /// [`Error::Stale`].
    pub async fn embed_frame(&self, images: Vec<Vec<f32>>, tag: Tag) -> Result<Reply> {
        self.submit(Work::Images(images), tag).await
    }

    async fn submit(&self, work: Work, tag: Tag) -> Result<Reply> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            work,
            deadline: tag.deadline,
            stale_at: tag.stale_at,
            enqueued: Instant::now(),
            reply,
        };
        let producer = &self.producer;
        queue_depth(&producer.depth, 1);
        match producer.queue.push(tag.flow, job) {
            Ok(()) => {}
            Err(Refused::Full) => {
                queue_depth(&producer.depth, -1);
                return Err(Error::ResourceExhausted(format!(
                    "server overloaded: the inference queue is full ({} jobs waiting, --max-queue); retry with backoff",
                    producer.capacity
                )));
            }
            Err(Refused::Closed) => {
                queue_depth(&producer.depth, -1);
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
    queue: Arc<FairQueue<Job>>,
    depth: Arc<AtomicUsize>,
    /// Consecutive batches in which no pass succeeded.
    failures: watch::Sender<u32>,
    /// This thread's CPU time inside the model's calls so far: the rest of its CPU is the batch
    /// stage's (`cpu_time`).
    in_model: Cell<Duration>,
}

/// What the queue gave the worker.
enum Next {
    Batch(Vec<Job>),
    /// Nothing waiting (only when asked not to wait).
    Empty,
    /// Every `Batcher` is gone and the queue is empty.
    Closed,
}

/// However the worker ends (a panic outside a batch included), callers are not left waiting:
/// new jobs are refused and the waiting ones are dropped, which answers them.
impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.queue.abandon());
    }
}

/// A batch's images copied into host memory, in passes of at most `max_batch_size`.
struct StagedBatch {
    jobs: Vec<Job>,
    passes: Vec<Result<Staged>>,
}

/// A batch whose vision passes are queued on the device.
struct InFlight {
    jobs: Vec<Job>,
    /// Each pass, and when it was submitted.
    passes: Vec<Result<(Pending, Instant)>>,
    started: Instant,
}

/// Consecutive rows of a batch that share one outcome: a pass, or part of one that was run again
/// after running out of memory.
struct Run {
    rows: usize,
    result: Result<Embeddings>,
}

impl Worker {
    fn run(self) {
        let mut in_flight: Option<InFlight> = None;
        loop {
            let cpu = (cpu_time::thread_now(), self.in_model.get());
            // While a batch runs on the device, take only work that is already waiting: with
            // none, that batch's callers are answered first.
            let batch = match self.next_batch(in_flight.is_none()) {
                Next::Batch(batch) => batch,
                Next::Empty => Vec::new(),
                Next::Closed => break,
            };
            // libtorch errors come back as `Result`s, but a panic (tch panics where it has no
            // fallible call) must not end the only inference thread while the server looks
            // healthy: the batches it held are dropped, so their callers get an error, and the
            // worker goes on with the next.
            let step = panic::catch_unwind(AssertUnwindSafe(|| self.step(batch, &mut in_flight)));
            if step.is_err() {
                counter!(metrics::WORKER_PANICS).increment(1);
                tracing::error!("the inference worker panicked; its current batches failed");
                in_flight = None;
                self.record(false);
            }
            let spent = cpu_time::thread_now().saturating_sub(cpu.0);
            cpu_time::record("batch", spent.saturating_sub(self.in_model.get() - cpu.1));
        }
        if let Some(running) = in_flight {
            self.finish(running);
        }
    }

    /// Runs one batch from the queue: its images are submitted (and, when pipelined, left
    /// running in `in_flight`), the previous batch is answered, its texts are run.
    fn step(&self, batch: Vec<Job>, in_flight: &mut Option<InFlight>) {
        let (images, texts): (Vec<Job>, Vec<Job>) = batch
            .into_iter()
            .filter_map(Job::still_wanted)
            .partition(|j| matches!(j.work, Work::Images(_)));
        let staged = (!images.is_empty()).then(|| self.stage(images));
        if let Some(running) = in_flight.take() {
            self.finish(running);
        }
        if !texts.is_empty() {
            self.run_texts(texts);
        }
        if let Some(staged) = staged {
            let running = self.submit(staged);
            if self.config.pipelined {
                *in_flight = Some(running);
            } else {
                self.finish(running);
            }
        }
    }

    /// Runs a call into the model, adding this thread's CPU time in it to `in_model`.
    fn in_model<T>(&self, call: impl FnOnce() -> T) -> T {
        let start = cpu_time::thread_now();
        let out = call();
        let spent = cpu_time::thread_now().saturating_sub(start);
        self.in_model.set(self.in_model.get() + spent);
        out
    }

    fn take(&self, job: Job) -> Job {
        queue_depth(&self.depth, -1);
        job
    }

    /// The first job (waiting for one if `wait`), then more until the batch is full or the delay
    /// is over. The queue picks each job from a flow not yet in the batch when one is waiting.
    fn next_batch(&self, wait: bool) -> Next {
        let mut in_batch = HashSet::new();
        let first = match self
            .queue
            .pop(if wait { Wait::Block } else { Wait::Now }, &in_batch)
        {
            Popped::Job(flow, job) => {
                in_batch.insert(flow);
                self.take(job)
            }
            Popped::Empty => return Next::Empty,
            Popped::Closed => return Next::Closed,
        };
        let close_at = Instant::now() + self.config.max_batch_delay;
        let mut rows = first.rows();
        let mut batch = vec![first];
        while rows < self.config.max_batch_size {
            let job = match self.queue.pop(Wait::Until(close_at), &in_batch) {
                Popped::Job(flow, job) => {
                    in_batch.insert(flow);
                    self.take(job)
                }
                Popped::Empty | Popped::Closed => break,
            };
            rows += job.rows();
            batch.push(job);
        }
        Next::Batch(batch)
    }

    /// Copies the batch's images into host memory for the device (one caller may send more rows
    /// than a pass holds: passes of at most `max_batch_size`).
    fn stage(&self, jobs: Vec<Job>) -> StagedBatch {
        let rows = image_rows(&jobs);
        let passes = rows
            .chunks(self.config.max_batch_size.max(1))
            .map(|pass| {
                histogram!(metrics::BATCH_SIZE).record(pass.len() as f64);
                counter!(metrics::IMAGES).increment(pass.len() as u64);
                self.model.stage_rows(pass)
            })
            .collect();
        StagedBatch { jobs, passes }
    }

    fn submit(&self, staged: StagedBatch) -> InFlight {
        let started = Instant::now();
        let passes = staged
            .passes
            .into_iter()
            .map(|pass| {
                // Taken before the call: on the CPU, `submit` runs the whole pass.
                let submitted = Instant::now();
                Ok((self.in_model(|| self.model.submit(pass?))?, submitted))
            })
            .collect();
        InFlight {
            jobs: staged.jobs,
            passes,
            started,
        }
    }

    /// Waits for a batch's passes and answers its callers. A pass that ran out of memory is run
    /// again in halves.
    fn finish(&self, running: InFlight) {
        let rows = image_rows(&running.jobs);
        let mut previous_done = running.started;
        let mut runs = Vec::new();
        let embed = |rows: &[&[f32]]| self.in_model(|| self.model.embed_rows(rows));
        for (pass, rows) in running
            .passes
            .into_iter()
            .zip(rows.chunks(self.config.max_batch_size.max(1)))
        {
            let result = pass.and_then(|(pass, submitted)| {
                let embeddings = self.in_model(|| self.model.finish(pass));
                // A pass queued behind another starts when that one is done.
                let done = Instant::now();
                histogram!(metrics::INFERENCE, "tower" => "vision")
                    .record(done.duration_since(submitted.max(previous_done)));
                previous_done = done;
                embeddings
            });
            runs.extend(self.settle("vision", rows, result, &embed));
        }
        self.answer(running.jobs, runs, running.started.elapsed());
    }

    fn run_texts(&self, jobs: Vec<Job>) {
        let ids: Vec<TokenIds> = jobs
            .iter()
            .flat_map(|job| match &job.work {
                Work::Texts(ids) => ids.clone(),
                Work::Images(_) => Vec::new(),
            })
            .collect();
        let started = Instant::now();
        let embed = |ids: &[TokenIds]| self.in_model(|| self.model.embed_token_ids(ids));
        let mut runs = Vec::new();
        for pass in ids.chunks(self.config.max_batch_size.max(1)) {
            let t = Instant::now();
            let result = embed(pass);
            histogram!(metrics::INFERENCE, "tower" => "text").record(t.elapsed());
            counter!(metrics::TEXTS).increment(pass.len() as u64);
            runs.extend(self.settle("text", pass, result, &embed));
        }
        self.answer(jobs, runs, started.elapsed());
    }

    /// The outcome of a pass over `rows` that gave `result`. Out of memory, it is run again in
    /// two halves (each of which may split again), so that a batch too large for the device
    /// still gets answered, and a row that fails even alone fails only its own caller. Any other
    /// error is final: a device-side assert or a lost device does not get better with smaller
    /// batches.
    fn settle<T>(
        &self,
        tower: &'static str,
        rows: &[T],
        result: Result<Embeddings>,
        embed: &impl Fn(&[T]) -> Result<Embeddings>,
    ) -> Vec<Run> {
        match result {
            Err(e) if is_out_of_memory(&e) && rows.len() > 1 => {
                counter!(metrics::INFERENCE_FAILURES, "tower" => tower, "reason" => "out_of_memory")
                    .increment(1);
                tracing::warn!(
                    tower,
                    rows = rows.len(),
                    error = %e,
                    "a forward pass ran out of memory; running it again in halves"
                );
                let (first, second) = rows.split_at(rows.len() / 2);
                let mut runs = self.settle(tower, first, embed(first), embed);
                runs.extend(self.settle(tower, second, embed(second), embed));
                runs
            }
            result => {
                if let Err(e) = &result {
                    let reason = if is_out_of_memory(e) {
                        "out_of_memory"
                    } else {
                        "error"
                    };
                    counter!(metrics::INFERENCE_FAILURES, "tower" => tower, "reason" => reason)
                        .increment(1);
                    tracing::error!(tower, rows = rows.len(), error = %e, "inference failed");
                }
                vec![Run {
                    rows: rows.len(),
                    result,
                }]
            }
        }
    }

    /// Counts a batch in the run of consecutive failures: one where nothing succeeded extends
    /// it, any success ends it (the device works; the rows that failed may be the inputs' fault).
    fn record(&self, succeeded: bool) {
        self.failures.send_if_modified(|count| {
            let before = *count;
            *count = if succeeded {
                0
            } else {
                count.saturating_add(1)
            };
            gauge!(metrics::CONSECUTIVE_FAILURES).set(*count as f64);
            *count != before
        });
    }

    /// Hands each job its own rows, in queue order: a job gets an error if any of its rows
    /// failed.
    fn answer(&self, jobs: Vec<Job>, runs: Vec<Run>, inference: Duration) {
        self.record(runs.iter().any(|run| run.result.is_ok()));
        let total: usize = jobs.iter().map(Job::rows).sum();
        let batch_size = total.min(self.config.max_batch_size.max(1));
        let mut rows = RowCursor::new(&runs);
        for job in jobs {
            let queue = job.enqueued.elapsed().saturating_sub(inference);
            histogram!(metrics::QUEUE_WAIT).record(queue);
            let reply = rows.take(job.rows()).map(|embeddings| Reply {
                embeddings,
                queue,
                inference,
                batch_size,
            });
            let _ = job.reply.send(reply);
        }
    }
}

/// The image rows of `jobs`, in order.
fn image_rows(jobs: &[Job]) -> Vec<&[f32]> {
    jobs.iter()
        .flat_map(|job| match &job.work {
            Work::Images(rows) => rows.iter().map(Vec::as_slice).collect(),
            Work::Texts(_) => Vec::new(),
        })
        .collect()
}

/// Walks a batch's runs, one caller's rows at a time.
struct RowCursor<'a> {
    runs: &'a [Run],
    run: usize,
    /// Rows of `runs[run]` already handed out.
    offset: usize,
}

impl<'a> RowCursor<'a> {
    fn new(runs: &'a [Run]) -> Self {
        Self {
            runs,
            run: 0,
            offset: 0,
        }
    }

    /// The next `n` rows' embeddings, or the error of the first run among them that failed.
    fn take(&mut self, mut n: usize) -> Result<Embeddings> {
        let mut data = Vec::new();
        let mut dim = 0;
        let mut error = None;
        while n > 0 {
            let Some(run) = self.runs.get(self.run) else {
                return Err(Error::Inference(
                    "the batch's passes returned fewer rows than it holds".into(),
                ));
            };
            let take = (run.rows - self.offset).min(n);
            match &run.result {
                Ok(e) => {
                    dim = e.dim;
                    data.extend_from_slice(
                        &e.data[self.offset * e.dim..(self.offset + take) * e.dim],
                    );
                }
                Err(e) => {
                    error.get_or_insert_with(|| match e {
                        Error::Inference(m) => m.clone(),
                        other => other.to_string(),
                    });
                }
            }
            self.offset += take;
            n -= take;
            if self.offset == run.rows {
                self.run += 1;
                self.offset = 0;
            }
        }
        match error {
            Some(message) => Err(Error::Inference(message)),
            None => Ok(Embeddings::new(dim, data)),
        }
    }
}

/// Moves the queue-depth counter and its gauge together. The gauge moves by the same delta
/// rather than being set to the new count: callers and the worker update it from different
/// threads, and a late `set` could leave it stale.
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

fn queue_depth(depth: &AtomicUsize, delta: isize) {
    if delta >= 0 {
        depth.fetch_add(delta as usize, Ordering::Relaxed);
        gauge!(metrics::QUEUE_DEPTH).increment(delta as f64);
    } else {
        depth.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        gauge!(metrics::QUEUE_DEPTH).decrement(delta.unsigned_abs() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(stale_at: Option<Instant>) -> (Job, oneshot::Receiver<Result<Reply>>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            work: Work::Images(vec![vec![0.0; 3]]),
            deadline: None,
            stale_at,
            enqueued: Instant::now(),
            reply,
        };
        (job, rx)
    }

    #[test]
    fn a_stale_job_is_answered_stale_and_not_run() {
        let (stale, mut rx) = job(Some(Instant::now()));
        assert!(stale.still_wanted().is_none(), "a stale job is not run");
        match rx.try_recv() {
            Ok(Err(Error::Stale(message))) => {
                assert!(message.contains("max_age_ms"), "{message}")
            }
            other => panic!("expected a stale answer, got {other:?}"),
        }
        let (fresh, _rx) = job(Some(Instant::now() + Duration::from_secs(3600)));
        assert!(fresh.still_wanted().is_some(), "a fresh frame is run");
        let (untagged, _rx) = job(None);
        assert!(untagged.still_wanted().is_some());
    }
}
