//! What every handler shares: the transport's limits, the core once the model is ready, and the
//! server's lifecycle (loading → serving → shutting down).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use tokio::sync::{watch, Semaphore};
use tonic::Status;

use super::{chunks::Budget, waits::Waits};
use crate::infer::Infer;
use crate::model::device::DType;

/// What the gRPC layer allows one caller.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message accepted, in bytes (bigger images go through Upload in chunks).
    pub max_message_bytes: usize,
    /// Concurrent Stream calls.
    pub max_streams: usize,
    /// Longest a Stream call may last, in seconds (0: no limit).
    pub max_stream_seconds: u64,
    /// Frames of one every-frame stream in flight at once.
    pub stream_pipeline: usize,
    /// Bytes held by unfinished Uploads and chunked frames, over all calls.
    pub max_reassembly_bytes: usize,
    /// Longest wait for a Stream's config or an Upload's header.
    pub first_message_timeout: Duration,
    /// Longest wait for each later message, and for a send to a Stream client to make progress.
    pub idle_timeout: Duration,
    /// The deadline of a unary call or Upload that carries none (`grpc-timeout`).
    pub request_timeout: Option<Duration>,
}

/// Where and how the model runs, as GetModelInfo reports it.
#[derive(Debug, Clone)]
pub struct RunningOn {
    /// `cpu`, `cuda:0`, …
    pub device: String,
    pub dtype: DType,
    /// What runs the vision tower: `torchscript` or `aoti`.
    pub backend: &'static str,
}

pub(super) struct State {
    ready: OnceLock<Ready>,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
    pub(super) limits: Limits,
    pub(super) streams: Arc<Semaphore>,
    /// Bytes of unfinished images, over all calls (`--max-reassembly-bytes`).
    pub(super) reassembly: Arc<Budget>,
}

/// Set once, when the model is loaded and warm.
pub(super) struct Ready {
    pub(super) infer: Arc<Infer>,
    pub(super) on: RunningOn,
}

impl State {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            ready: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            reassembly: Budget::new(limits.max_reassembly_bytes),
            limits,
        }
    }

    pub(super) fn waits(&self) -> Waits {
        Waits {
            first_message: self.limits.first_message_timeout,
            idle: self.limits.idle_timeout,
        }
    }

    /// The model is loaded and warm: requests are served from now on.
    pub(super) fn set_ready(&self, infer: Arc<Infer>, on: RunningOn) {
        let _ = self.ready.set(Ready { infer, on });
    }

    /// New requests get UNAVAILABLE; open streams are asked to finish.
    pub(super) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }

    pub(super) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(super) fn infer(&self) -> Result<Arc<Infer>, Status> {
        self.ready().map(|r| Arc::clone(&r.infer))
    }

    pub(super) fn ready(&self) -> Result<&Ready, Status> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "server is shutting down: retry on another replica",
            ));
        }
        self.ready.get().ok_or_else(|| {
            Status::unavailable(
                "model is still loading: retry shortly (the health service says when it is SERVING)",
            )
        })
    }
}
