//! How a stream's complete frames become results, by delivery mode: every frame in order
//! through a bounded pipeline, or only the latest.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use ::metrics::{counter, histogram};
use tokio::sync::{mpsc, Notify};
use tonic::Status;

use super::{convert, pb};
use crate::error::Error;
use crate::infer::{ImageInput, Infer, Labels};
use crate::metrics;
use crate::model::scores::ScoreFilter;

pub(super) type Output = Result<pb::StreamResponse, Status>;

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
    pub(super) fn ordered(infer: Arc<Infer>, out: mpsc::Sender<Output>, depth: usize) -> Self {
        // The bounded queue of in-flight frames is the backpressure: when it is full, `submit`
        // waits, so the server stops reading the client's frames.
        let (pending, mut rx) = mpsc::channel::<tokio::task::JoinHandle<pb::StreamResponse>>(depth);
        let writer = tokio::spawn(async move {
            while let Some(task) = rx.recv().await {
                let Ok(response) = task.await else { continue };
                if out.send(Ok(response)).await.is_err() {
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

    pub(super) fn latest(infer: Arc<Infer>, out: mpsc::Sender<Output>) -> Self {
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
                        if out.send(Ok(response)).await.is_err() {
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
