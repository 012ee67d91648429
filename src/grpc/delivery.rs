//! How a stream's complete frames become outcomes, by delivery mode: every frame in order
//! through a bounded pipeline, or only the latest; the outcomes go to the stream's `Reporter`,
//! and its messages reach the client through the [`Outbox`], where every send has an end.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use ::metrics::{counter, histogram};
use tokio::sync::{mpsc, watch, Notify};
use tonic::Status;

use super::{
    convert, pb,
    report::{AreaScores, FrameMeta, Outcome, Reporter},
};
use crate::batch::{Flow, Tag};
use crate::error::Error;
use crate::infer::{ImageInput, Infer};
use crate::metrics;
use crate::model::image::Region;
use crate::video::drops::{DropCounts, DropReason};

pub(super) type Output = Result<pb::StreamResponse, Status>;

/// The stream's results on their way to the client. A client that stops reading fills the
/// channel (HTTP/2 flow control stops tonic from taking more); then a send waits at most
/// `--idle-timeout-seconds`, and never past the stream's lifetime, before the stream is given up
/// as stalled: a client that does not read cannot keep its stream, its slot or the server's
/// work.
#[derive(Clone)]
pub(super) struct Outbox {
    tx: mpsc::Sender<Output>,
    idle: Duration,
    ends_at: Option<tokio::time::Instant>,
    /// Set once when a send gives up: why the stream ends.
    stalled: Arc<watch::Sender<Option<Status>>>,
}

impl Outbox {
    pub(super) fn new(
        tx: mpsc::Sender<Output>,
        idle: Duration,
        ends_at: Option<tokio::time::Instant>,
    ) -> Self {
        Self {
            tx,
            idle,
            ends_at,
            stalled: Arc::new(watch::channel(None).0),
        }
    }

    /// False when the result could not be delivered: the client went away, or stopped reading
    /// (then [`Outbox::stalled`] says why).
    pub(super) async fn send(&self, response: pb::StreamResponse) -> bool {
        let idle_end = tokio::time::Instant::now() + self.idle;
        let (until, why) = match self.ends_at {
            Some(end) if end < idle_end => (
                end,
                "before the stream's lifetime ended (--max-stream-seconds)".to_string(),
            ),
            _ => (
                idle_end,
                format!("for {}s (--idle-timeout-seconds)", self.idle.as_secs_f64()),
            ),
        };
        match tokio::time::timeout_at(until, self.tx.send(Ok(response))).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.stalled.send_if_modified(|stalled| {
                    stalled.get_or_insert_with(|| {
                        Status::deadline_exceeded(format!(
                            "the client did not read its results {why}: the stream was ended; \
                             read results as they come"
                        ))
                    });
                    true
                });
                false
            }
        }
    }

    /// Resolves once a send has given up, with the status the stream ends with.
    pub(super) async fn stalled(&self) -> Status {
        let mut stalled = self.stalled.subscribe();
        let status = match stalled.wait_for(Option::is_some).await {
            Ok(status) => status.clone(),
            // The sender lives as long as `self`.
            Err(_) => None,
        };
        match status {
            Some(status) => status,
            None => std::future::pending().await,
        }
    }

    /// The status of a stall, if a send has given up.
    pub(super) fn stall(&self) -> Option<Status> {
        self.stalled.borrow().clone()
    }

    /// Resolves when the client has gone (tonic dropped the response stream).
    pub(super) async fn closed(&self) {
        self.tx.closed().await
    }
}

/// A whole frame, ready to classify (or already known to be bad).
pub(super) struct ReadyFrame {
    /// When the frame was complete: its age (`max_age_ms`) and staleness run from here.
    pub(super) received: Instant,
    pub(super) meta: FrameMeta,
    /// The frame's own regions, replacing the config's for this frame.
    pub(super) regions: Option<Vec<Region>>,
    pub(super) image: Result<ImageInput, Error>,
}

async fn classify_frame(infer: &Infer, frame: ReadyFrame, flow: Flow) -> Outcome {
    let ReadyFrame {
        received,
        meta,
        regions,
        image,
    } = frame;
    let config = Arc::clone(&meta.config);
    let stale_at = config.settings.policy.max_age.map(|age| received + age);
    if stale_at.is_some_and(|at| Instant::now() >= at) {
        DropReason::Stale.record();
        return Outcome::Dropped {
            meta,
            reason: DropReason::Stale,
        };
    }
    let regions = regions.as_deref().unwrap_or(&config.settings.regions);
    let result = match image {
        Ok(image) => {
            infer
                .classify_frame(
                    image,
                    regions,
                    &config.labels,
                    Tag {
                        flow,
                        deadline: None,
                        stale_at,
                    },
                )
                .await
        }
        Err(e) => Err(e),
    };
    if let Err(Error::Stale(_)) = result {
        DropReason::Stale.record();
        return Outcome::Dropped {
            meta,
            reason: DropReason::Stale,
        };
    }
    histogram!(metrics::STALENESS).record(received.elapsed());
    match result {
        Ok(scores) => {
            counter!(metrics::FRAMES_CLASSIFIED).increment(1);
            let areas = if regions.is_empty() {
                scores
                    .areas
                    .into_iter()
                    .map(|scores| AreaScores {
                        region: None,
                        scores,
                    })
                    .collect()
            } else {
                (0..)
                    .zip(regions)
                    .zip(scores.areas)
                    .map(|((index, r), scores)| AreaScores {
                        region: Some((index, convert::region(*r))),
                        scores,
                    })
                    .collect()
            };
            Outcome::Scored {
                meta,
                areas,
                timings: scores.timings,
            }
        }
        Err(e) => Outcome::Failed {
            meta,
            error: Status::from(e),
        },
    }
}

/// Where complete frames go, by delivery mode.
pub(super) struct Sink(Mode);

enum Mode {
    Ordered {
        pending: mpsc::Sender<Pending>,
        writer: tokio::task::JoinHandle<()>,
        infer: Arc<Infer>,
        flow: Flow,
    },
    Latest {
        slot: Arc<LatestSlot>,
        worker: tokio::task::JoinHandle<()>,
    },
}

/// A frame's place in the every-frame pipeline: being classified, or already settled (a frame
/// skipped for its rate keeps its place, so that results and drop counts stay in frame order).
enum Pending {
    Task(tokio::task::JoinHandle<Outcome>, FrameMeta),
    Settled(Outcome),
}

/// The newest frame not yet classified, and the frames dropped since the last result.
#[derive(Default)]
struct LatestSlot {
    state: Mutex<SlotState>,
    ready: Notify,
}

#[derive(Default)]
struct SlotState {
    frame: Option<ReadyFrame>,
    drops: DropCounts,
    closed: bool,
}

impl LatestSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Sink {
    /// `flow`: the stream's share of the inference queue (every frame of a stream is one flow,
    /// so that streams are served in turn).
    pub(super) fn ordered(infer: Arc<Infer>, flow: Flow, out: Outbox, depth: usize) -> Self {
        // The bounded queue of in-flight frames is the backpressure: when it is full, `submit`
        // waits, so the server stops reading the client's frames.
        let (pending, mut rx) = mpsc::channel::<Pending>(depth);
        let writer = tokio::spawn(async move {
            let mut reporter = Reporter::new(out);
            while let Some(next) = rx.recv().await {
                let outcome = match next {
                    // A task that panicked still answers for its frame.
                    Pending::Task(task, meta) => task.await.unwrap_or_else(|e| Outcome::Failed {
                        meta,
                        error: Status::internal(format!("classifying the frame failed: {e}")),
                    }),
                    Pending::Settled(outcome) => outcome,
                };
                if !reporter.take(outcome).await {
                    return;
                }
            }
            reporter.finish().await;
        });
        Sink(Mode::Ordered {
            pending,
            writer,
            infer,
            flow,
        })
    }

    pub(super) fn latest(infer: Arc<Infer>, flow: Flow, out: Outbox) -> Self {
        let slot = Arc::new(LatestSlot::default());
        let worker_slot = Arc::clone(&slot);
        let worker = tokio::spawn(async move {
            let mut reporter = Reporter::new(out);
            loop {
                let next = {
                    let mut state = worker_slot.lock();
                    reporter.dropped(state.drops.take());
                    match state.frame.take() {
                        Some(frame) => Some(frame),
                        None if state.closed => break,
                        None => None,
                    }
                };
                match next {
                    Some(frame) => {
                        let outcome = classify_frame(&infer, frame, flow).await;
                        if !reporter.take(outcome).await {
                            return;
                        }
                    }
                    None => worker_slot.ready.notified().await,
                }
            }
            reporter.finish().await;
        });
        Sink(Mode::Latest { slot, worker })
    }

    /// False when the client has gone.
    pub(super) async fn submit(&self, frame: ReadyFrame) -> bool {
        match &self.0 {
            Mode::Ordered {
                pending,
                infer,
                flow,
                ..
            } => {
                let (infer, flow) = (Arc::clone(infer), *flow);
                let meta = frame.meta.clone();
                let task = tokio::spawn(async move { classify_frame(&infer, frame, flow).await });
                pending.send(Pending::Task(task, meta)).await.is_ok()
            }
            Mode::Latest { slot, worker } => {
                {
                    let mut state = slot.lock();
                    if state.frame.replace(frame).is_some() {
                        state.drops.add(DropReason::Superseded);
                        DropReason::Superseded.record();
                    }
                }
                slot.ready.notify_one();
                !worker.is_finished()
            }
        }
    }

    /// A frame that will not be classified (already counted in the metrics where it was
    /// dropped). False when the client has gone.
    pub(super) async fn skip(&self, meta: FrameMeta, reason: DropReason) -> bool {
        match &self.0 {
            Mode::Ordered { pending, .. } => pending
                .send(Pending::Settled(Outcome::Dropped { meta, reason }))
                .await
                .is_ok(),
            Mode::Latest { slot, worker } => {
                slot.lock().drops.add(reason);
                !worker.is_finished()
            }
        }
    }

    /// Waits until every frame already accepted is answered, and the drops since the last
    /// answer are reported.
    pub(super) async fn finish(self) {
        match self.0 {
            Mode::Ordered {
                pending, writer, ..
            } => {
                drop(pending);
                let _ = writer.await;
            }
            Mode::Latest { slot, worker } => {
                slot.lock().closed = true;
                slot.ready.notify_one();
                let _ = worker.await;
            }
        }
    }
}
