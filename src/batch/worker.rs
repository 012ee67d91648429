//! The inference thread's loop: take a batch from the fair queue (the first job, then more
//! until the batch is full or the delay is over), stage its images, run the towers, answer.

use std::{
    cell::Cell,
    collections::HashSet,
    panic::{self, AssertUnwindSafe},
    sync::{atomic::AtomicUsize, Arc},
    time::{Duration, Instant},
};

use ::metrics::{counter, gauge, histogram};
use tokio::sync::watch;
use tracing::Span;

use super::fair::{FairQueue, Popped, Wait};
use super::job::{image_rows, passes, Job, Work};
use super::{queue_depth, BatchConfig, DeviceTurn};
use crate::cpu_time;
use crate::error::Result;
use crate::metrics;
use crate::model::{image::Pixels, tokenizer::TokenIds, Model, Staged, Submitted};
use crate::telemetry;

pub(super) struct Worker {
    pub(super) model: Model,
    pub(super) config: BatchConfig,
    /// Taken for every batch: the device may be shared with other models' workers.
    pub(super) turn: Arc<DeviceTurn>,
    /// The model's name: the `model` label of every metric the worker records.
    pub(super) label: Arc<str>,
    pub(super) queue: Arc<FairQueue<Job>>,
    pub(super) depth: Arc<AtomicUsize>,
    /// Consecutive batches in which no pass succeeded.
    pub(super) failures: watch::Sender<u32>,
    /// This thread's CPU time inside the model's calls so far: the rest of its CPU is the batch
    /// stage's (`cpu_time`).
    pub(super) in_model: Cell<Duration>,
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
    span: Span,
}

/// A batch whose vision passes are queued on the device.
struct InFlight {
    jobs: Vec<Job>,
    /// The batch's span, ended once its callers are answered.
    span: Span,
    /// Each pass, and when it was submitted.
    passes: Vec<Result<(Submitted, Instant)>>,
    started: Instant,
}

impl Worker {
    pub(super) fn run(self) {
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
            let step = panic::catch_unwind(AssertUnwindSafe(|| {
                // Nothing to run (a pipelined batch waiting to be answered) needs no turn.
                let _turn = (!batch.is_empty()).then(|| self.turn.take());
                self.step(batch, &mut in_flight)
            }));
            if step.is_err() {
                counter!(metrics::WORKER_PANICS, "model" => self.model_label()).increment(1);
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
            .filter_map(|job| job.still_wanted(&self.label))
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
        queue_depth(&self.depth, &self.label, -1);
        job
    }

    pub(super) fn model_label(&self) -> Arc<str> {
        Arc::clone(&self.label)
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
    /// than a pass holds: passes of at most `max_batch_size`). Images of different sizes (a
    /// NaFlex model's budgets) go in passes of their own: the jobs are ordered by size, in queue
    /// order within one, so that each size's rows lie together.
    fn stage(&self, mut jobs: Vec<Job>) -> StagedBatch {
        jobs.sort_by_key(Job::image_size);
        let span = self.traced_batch(&mut jobs, "vision");
        let rows = image_rows(&jobs);
        let passes = passes(&rows, self.config.max_batch_size)
            .into_iter()
            .map(|pass| {
                histogram!(metrics::BATCH_SIZE, "model" => self.model_label())
                    .record(pass.len() as f64);
                counter!(metrics::IMAGES, "model" => self.model_label())
                    .increment(pass.len() as u64);
                self.model.stage_rows(pass)
            })
            .collect();
        StagedBatch { jobs, passes, span }
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
            span: staged.span,
            passes,
            started,
        }
    }

    /// Waits for a batch's passes and answers its callers. A pass that ran out of memory is run
    /// again in halves.
    fn finish(&self, running: InFlight) {
        let rows = image_rows(&running.jobs);
        let passes = passes(&rows, self.config.max_batch_size);
        let sizes: Vec<usize> = passes.iter().map(|pass| pass.len()).collect();
        let mut previous_done = running.started;
        let mut runs = Vec::new();
        let embed = |rows: &[&Pixels]| self.in_model(|| self.model.embed_rows(rows));
        for (pass, rows) in running.passes.into_iter().zip(passes) {
            let result = pass.and_then(|(pass, submitted)| {
                let embeddings = self.in_model(|| self.model.finish(pass));
                // A pass queued behind another starts when that one is done.
                let done = Instant::now();
                histogram!(metrics::INFERENCE, "tower" => "vision", "model" => self.model_label())
                    .record(done.duration_since(submitted.max(previous_done)));
                previous_done = done;
                embeddings
            });
            runs.extend(self.settle("vision", rows, result, &embed));
        }
        self.answer(running.jobs, runs, &sizes, running.started.elapsed());
        drop(running.span);
    }

    fn run_texts(&self, mut jobs: Vec<Job>) {
        let span = self.traced_batch(&mut jobs, "text");
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
        let mut sizes = Vec::new();
        for pass in ids.chunks(self.config.max_batch_size.max(1)) {
            sizes.push(pass.len());
            let t = Instant::now();
            let result = embed(pass);
            histogram!(metrics::INFERENCE, "tower" => "text", "model" => self.model_label())
                .record(t.elapsed());
            counter!(metrics::TEXTS, "model" => self.model_label()).increment(pass.len() as u64);
            runs.extend(self.settle("text", pass, result, &embed));
        }
        self.answer(jobs, runs, &sizes, started.elapsed());
        drop(span);
    }

    /// The span of a batch of `jobs` for `tower`, linked to the span of each traced call in it,
    /// and each such job's inference span (linked back to the batch), which ends its queue span.
    /// `Span::none()` when no call in it is traced. The batch is a root of its own: it belongs
    /// to every call in it, not to one.
    fn traced_batch(&self, jobs: &mut [Job], tower: &'static str) -> Span {
        if jobs.iter().all(|job| job.call.is_none()) {
            return Span::none();
        }
        let on = self.model.running_on();
        let rows: usize = jobs.iter().map(Job::rows).sum();
        let batch = tracing::trace_span!(
            target: telemetry::TARGET,
            parent: None,
            "batch",
            otel.name = "batch",
            siglip.tower = tower,
            siglip.batch_size = rows as i64,
            siglip.model = &*self.label,
            siglip.device = on.device.as_str(),
            siglip.dtype = %on.dtype,
            siglip.backend = on.backend,
        );
        // Every link before anything asks for the batch's context: it is sampled (when started)
        // if any call it links to is.
        for job in jobs.iter().filter(|job| !job.call.is_none()) {
            batch.follows_from(&job.call);
        }
        for job in jobs.iter_mut().filter(|job| !job.call.is_none()) {
            job.stage = telemetry::child(&job.call, "inference");
            job.stage.record("siglip.tower", tower);
            job.stage.follows_from(&batch);
        }
        batch
    }

    /// Counts a batch in the run of consecutive failures: one where nothing succeeded extends
    /// it, any success ends it (the device works; the rows that failed may be the inputs' fault).
    pub(super) fn record(&self, succeeded: bool) {
        self.failures.send_if_modified(|count| {
            let before = *count;
            *count = if succeeded {
                0
            } else {
                count.saturating_add(1)
            };
            gauge!(metrics::CONSECUTIVE_FAILURES, "model" => self.model_label()).set(*count as f64);
            *count != before
        });
    }
}
