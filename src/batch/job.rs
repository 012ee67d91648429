//! A job in the queue: a caller's rows, whose they are, and when they are no longer worth running.

use std::{sync::Arc, time::Instant};

use ::metrics::{counter, histogram};
use tokio::sync::oneshot;
use tracing::Span;

use super::{Flow, Reply};
use crate::error::{Error, Result};
use crate::metrics;
use crate::model::{image::Pixels, tokenizer::TokenIds};
use crate::telemetry;

/// A job's rows.
pub(super) enum Work {
    /// Preprocessed images, all of one shape (a request chooses one NaFlex budget).
    Images(Vec<Pixels>),
    Texts(Vec<TokenIds>),
}

impl Work {
    /// The tower that runs it.
    pub(super) fn tower(&self) -> &'static str {
        match self {
            Work::Images(_) => "vision",
            Work::Texts(_) => "text",
        }
    }
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
    pub(super) fn alone(deadline: Option<Instant>) -> Self {
        Self {
            flow: Flow::new(),
            deadline,
            stale_at: None,
        }
    }
}

/// One caller's rows, waiting for the worker.
pub(super) struct Job {
    pub(super) work: Work,
    pub(super) deadline: Option<Instant>,
    pub(super) stale_at: Option<Instant>,
    pub(super) enqueued: Instant,
    pub(super) reply: oneshot::Sender<Result<Reply>>,
    /// The span of the call (or frame) the job is for, when traced.
    pub(super) call: Span,
    /// The stage the job is in, under `call`: its queue wait, then its inference.
    pub(super) stage: Span,
}

impl Job {
    /// A job for `work`, queued now by the call whose span is current.
    pub(super) fn new(work: Work, tag: &Tag, reply: oneshot::Sender<Result<Reply>>) -> Self {
        let call = Span::current();
        let stage = telemetry::child(&call, "queue");
        stage.record("siglip.tower", work.tower());
        Self {
            work,
            deadline: tag.deadline,
            stale_at: tag.stale_at,
            enqueued: Instant::now(),
            reply,
            call,
            stage,
        }
    }

    /// Floats per image (0 for texts): images of one size share a pass.
    pub(super) fn image_size(&self) -> usize {
        match &self.work {
            Work::Images(rows) => rows.first().map_or(0, |row| row.values.len()),
            Work::Texts(_) => 0,
        }
    }

    pub(super) fn rows(&self) -> usize {
        match &self.work {
            Work::Images(rows) => rows.len(),
            Work::Texts(ids) => ids.len(),
        }
    }

    /// A job nobody waits for any more is dropped; one past its deadline or stale is answered so.
    /// `model` labels the metrics.
    pub(super) fn still_wanted(mut self, model: &Arc<str>) -> Option<Self> {
        let queue_wait = histogram!(metrics::QUEUE_WAIT, "model" => Arc::clone(model));
        if self.reply.is_closed() {
            counter!(metrics::REQUESTS_DROPPED, "reason" => "cancelled", "model" => Arc::clone(model))
                .increment(1);
            queue_wait.record(self.enqueued.elapsed());
            return None;
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            self.stage.record("siglip.dropped", "deadline");
            // Its queue span ends before its caller hears (and its call's span can end).
            self.stage = Span::none();
            counter!(metrics::REQUESTS_DROPPED, "reason" => "deadline", "model" => Arc::clone(model))
                .increment(1);
            let waited = self.enqueued.elapsed();
            // The longest waits are these: leaving them out would hide the tail under overload.
            queue_wait.record(waited);
            let _ = self.reply.send(Err(Error::DeadlineExceeded(format!(
                "the request waited {} ms in the queue; it was dropped before inference",
                waited.as_millis()
            ))));
            return None;
        }
        let now = Instant::now();
        if let Some(stale_at) = self.stale_at.filter(|&at| now >= at) {
            self.stage.record("siglip.dropped", "stale");
            self.stage = Span::none();
            // Not a dropped request: the stream counts its stale frames itself, by reason.
            let waited = self.enqueued.elapsed();
            queue_wait.record(waited);
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

/// The image rows of `jobs`, in order.
pub(super) fn image_rows(jobs: &[Job]) -> Vec<&Pixels> {
    jobs.iter()
        .flat_map(|job| match &job.work {
            Work::Images(rows) => rows.iter().collect(),
            Work::Texts(_) => Vec::new(),
        })
        .collect()
}

/// The passes over `rows`: runs of rows of one size (a NaFlex model's budgets M differ), each
/// cut into passes of at most `max` rows.
pub(super) fn passes<'a, 'r>(rows: &'a [&'r Pixels], max: usize) -> Vec<&'a [&'r Pixels]> {
    rows.chunk_by(|a, b| a.values.len() == b.values.len())
        .flat_map(|run| run.chunks(max.max(1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn job(stale_at: Option<Instant>) -> (Job, oneshot::Receiver<Result<Reply>>) {
        let (reply, rx) = oneshot::channel();
        let tag = Tag {
            flow: crate::batch::Flow::new(),
            deadline: None,
            stale_at,
        };
        let pixels = Pixels {
            values: vec![0.0; 3],
            grid: None,
        };
        (Job::new(Work::Images(vec![pixels]), &tag, reply), rx)
    }

    /// Rows of one size share passes of at most `max`; a change of size starts a new pass.
    #[test]
    fn passes_hold_rows_of_one_size() {
        let rows: Vec<Pixels> = [3, 3, 3, 6, 6, 3]
            .iter()
            .map(|&n| vec![0.0; n].into())
            .collect();
        let refs: Vec<&Pixels> = rows.iter().collect();
        let sizes: Vec<Vec<usize>> = passes(&refs, 2)
            .iter()
            .map(|pass| pass.iter().map(|row| row.values.len()).collect())
            .collect();
        assert_eq!(sizes, [vec![3, 3], vec![3], vec![6, 6], vec![3]]);
    }

    #[test]
    fn a_stale_job_is_answered_stale_and_not_run() {
        let (stale, mut rx) = job(Some(Instant::now()));
        assert!(
            stale.still_wanted(&"m".into()).is_none(),
            "a stale job is not run"
        );
        match rx.try_recv() {
            Ok(Err(Error::Stale(message))) => {
                assert!(message.contains("max_age_ms"), "{message}")
            }
            other => panic!("expected a stale answer, got {other:?}"),
        }
        let (fresh, _rx) = job(Some(Instant::now() + Duration::from_secs(3600)));
        assert!(
            fresh.still_wanted(&"m".into()).is_some(),
            "a fresh frame is run"
        );
        let (untagged, _rx) = job(None);
        assert!(untagged.still_wanted(&"m".into()).is_some());
    }
}
