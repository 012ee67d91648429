//! How a stream's complete frames become outcomes, by delivery mode: every frame in order
//! through a bounded pipeline, or only the latest. The outcomes go to the stream's `Reporter`,
//! and its messages reach the client through the `Outbox`.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, Notify};
use tonic::Status;

use super::frame::{self, FrameMeta, Outcome, ReadyFrame};
use super::outbox::Outbox;
use super::report::Reporter;
use crate::grpc::pb;
use crate::infer::Flow;
use crate::stream::drops::{DropCounts, DropReason};

/// Where complete frames go, by delivery mode.
pub(super) struct Sink(Mode);

enum Mode {
    Ordered {
        places: mpsc::Sender<Place>,
        writer: tokio::task::JoinHandle<()>,
        flow: Flow,
    },
    Latest {
        slot: Arc<LatestSlot>,
        worker: tokio::task::JoinHandle<()>,
    },
}

/// A frame's place in the every-frame pipeline: being classified, or already done (a frame
/// skipped for its rate keeps its place, so that results and drop counts stay in frame order).
enum Place {
    Task(tokio::task::JoinHandle<Outcome>, FrameMeta),
    Done(Outcome),
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
    pub(super) fn ordered(flow: Flow, out: Outbox<pb::StreamResponse>, depth: usize) -> Self {
        // The bounded queue of in-flight frames is the backpressure: when it is full, `submit`
        // waits, so the server stops reading the client's frames.
        let (places, mut rx) = mpsc::channel::<Place>(depth);
        let writer = tokio::spawn(async move {
            let mut reporter = Reporter::new(out);
            while let Some(next) = rx.recv().await {
                let outcome = match next {
                    // A task that panicked still answers for its frame.
                    Place::Task(task, meta) => task.await.unwrap_or_else(|e| Outcome::Failed {
                        meta,
                        error: Status::internal(format!("classifying the frame failed: {e}")),
                    }),
                    Place::Done(outcome) => outcome,
                };
                if !reporter.take(outcome).await {
                    return;
                }
            }
            reporter.finish().await;
        });
        Sink(Mode::Ordered {
            places,
            writer,
            flow,
        })
    }

    pub(super) fn latest(flow: Flow, out: Outbox<pb::StreamResponse>) -> Self {
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
                    Some(ready) => {
                        let outcome = frame::classify(ready, flow).await;
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
    pub(super) async fn submit(&self, ready: ReadyFrame) -> bool {
        match &self.0 {
            Mode::Ordered { places, flow, .. } => {
                let flow = *flow;
                let meta = ready.meta.clone();
                let task = tokio::spawn(async move { frame::classify(ready, flow).await });
                places.send(Place::Task(task, meta)).await.is_ok()
            }
            Mode::Latest { slot, worker } => {
                {
                    let mut state = slot.lock();
                    if state.frame.replace(ready).is_some() {
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
            Mode::Ordered { places, .. } => places
                .send(Place::Done(Outcome::Dropped { meta, reason }))
                .await
                .is_ok(),
            Mode::Latest { slot, worker } => {
                slot.lock().drops.add(reason);
                !worker.is_finished()
            }
        }
    }

    /// ClientTimeouts until every frame already accepted is answered, and the drops since the last
    /// answer are reported.
    pub(super) async fn finish(self) {
        match self.0 {
            Mode::Ordered { places, writer, .. } => {
                drop(places);
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
