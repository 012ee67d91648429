//! How a stream's complete frames become results, by delivery mode: every frame in order
//! through a bounded pipeline, or only the latest; and how results reach the client
//! ([`Outbox`]), where every send has an end.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ::metrics::{counter, histogram};
use tokio::sync::{mpsc, watch, Notify};
use tonic::Status;

use super::{convert, pb};
use crate::error::Error;
use crate::infer::{ImageInput, Infer, Labels};
use crate::metrics;
use crate::model::scores::ScoreFilter;

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

/// The label set frames are classified against.
pub(super) struct ActiveLabels {
    pub(super) labels: Labels,
    pub(super) filter: ScoreFilter,
    pub(super) generation: u32,
}

/// A whole frame, ready to classify (or already known to be bad).
pub(super) struct ReadyFrame {
    /// When the frame was complete, for the staleness of its result.
    pub(super) received: Instant,
    pub(super) id: u64,
    pub(super) timestamp_us: i64,
    pub(super) image: Result<ImageInput, Error>,
    pub(super) labels: Arc<ActiveLabels>,
}

async fn classify_frame(infer: &Infer, frame: ReadyFrame, skipped: u64) -> pb::StreamResponse {
    let received = frame.received;
    let mut response = pb::StreamResponse {
        frame_id: frame.id,
        timestamp_us: frame.timestamp_us,
        skipped_frames: skipped,
        config_generation: frame.labels.generation,
        ..Default::default()
    };
    let result = match frame.image {
        Ok(image) => {
            infer
                .classify_with(image, &frame.labels.labels, frame.labels.filter, None)
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(c) => {
            counter!(metrics::FRAMES_CLASSIFIED).increment(1);
            response.scores = convert::scores(c.scores);
            response.timings = Some(convert::timings(c.timings));
        }
        Err(e) => {
            counter!(metrics::FRAMES_DROPPED, "reason" => "error").increment(1);
            let status = Status::from(e);
            response.error = Some(pb::FrameError {
                code: status.code() as i32,
                message: status.message().to_string(),
            });
        }
    }
    histogram!(metrics::STALENESS).record(received.elapsed());
    response
}

/// Where complete frames go, by delivery mode.
pub(super) struct Sink(Mode);

enum Mode {
    Ordered {
        pending: mpsc::Sender<tokio::task::JoinHandle<pb::StreamResponse>>,
        writer: tokio::task::JoinHandle<()>,
        infer: Arc<Infer>,
    },
    Latest {
        slot: Arc<LatestSlot>,
        worker: tokio::task::JoinHandle<()>,
    },
}

/// The newest frame not yet classified, and how many were replaced since the last result.
#[derive(Default)]
struct LatestSlot {
    state: Mutex<SlotState>,
    ready: Notify,
}

#[derive(Default)]
struct SlotState {
    frame: Option<ReadyFrame>,
    skipped: u64,
    closed: bool,
}

impl Sink {
    pub(super) fn ordered(infer: Arc<Infer>, out: Outbox, depth: usize) -> Self {
        // The bounded queue of in-flight frames is the backpressure: when it is full, `submit`
        // waits, so the server stops reading the client's frames.
        let (pending, mut rx) = mpsc::channel::<tokio::task::JoinHandle<pb::StreamResponse>>(depth);
        let writer = tokio::spawn(async move {
            while let Some(task) = rx.recv().await {
                let Ok(response) = task.await else { continue };
                if !out.send(response).await {
                    break;
                }
            }
        });
        Sink(Mode::Ordered {
            pending,
            writer,
            infer,
        })
    }

    pub(super) fn latest(infer: Arc<Infer>, out: Outbox) -> Self {
        let slot = Arc::new(LatestSlot::default());
        let worker_slot = Arc::clone(&slot);
        let worker = tokio::spawn(async move {
            loop {
                let next = {
                    let mut state = worker_slot.state.lock().expect("slot lock");
                    match state.frame.take() {
                        Some(frame) => Some((frame, std::mem::take(&mut state.skipped))),
                        None if state.closed => break,
                        None => None,
                    }
                };
                match next {
                    Some((frame, skipped)) => {
                        let response = classify_frame(&infer, frame, skipped).await;
                        if !out.send(response).await {
                            break;
                        }
                    }
                    None => worker_slot.ready.notified().await,
                }
            }
        });
        Sink(Mode::Latest { slot, worker })
    }

    /// False when the client has gone.
    pub(super) async fn submit(&self, frame: ReadyFrame) -> bool {
        match &self.0 {
            Mode::Ordered { pending, infer, .. } => {
                let infer = Arc::clone(infer);
                let task = tokio::spawn(async move { classify_frame(&infer, frame, 0).await });
                pending.send(task).await.is_ok()
            }
            Mode::Latest { slot, worker } => {
                {
                    let mut state = slot.state.lock().expect("slot lock");
                    if state.frame.replace(frame).is_some() {
                        state.skipped += 1;
                        counter!(metrics::FRAMES_DROPPED, "reason" => "superseded").increment(1);
                    }
                }
                slot.ready.notify_one();
                !worker.is_finished()
            }
        }
    }

    /// Waits until every frame already accepted is answered.
    pub(super) async fn finish(self) {
        match self.0 {
            Mode::Ordered {
                pending, writer, ..
            } => {
                drop(pending);
                let _ = writer.await;
            }
            Mode::Latest { slot, worker } => {
                slot.state.lock().expect("slot lock").closed = true;
                slot.ready.notify_one();
                let _ = worker.await;
            }
        }
    }
}
