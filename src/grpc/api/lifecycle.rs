//! What every handler shares: the per-call limits, the core once the model is ready, and the
//! server's lifecycle (loading → serving → shutting down).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, OnceLock,
};

use tokio::sync::{watch, Semaphore};
use tonic::Status;

use super::{chunks::Budget, timeouts::ClientTimeouts, CallLimits};
use crate::infer::Infer;
use crate::model::RunningOn;

pub(in crate::grpc) struct Lifecycle {
    ready: OnceLock<Ready>,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
    pub(super) limits: CallLimits,
    pub(super) streams: Arc<Semaphore>,
    /// Bytes of unfinished images, over all calls (`--max-reassembly-bytes`).
    pub(super) reassembly: Arc<Budget>,
}

/// Set once, when the model is loaded and warm.
pub(super) struct Ready {
    pub(super) infer: Arc<Infer>,
    pub(super) on: RunningOn,
}

impl Lifecycle {
    pub(in crate::grpc) fn new(limits: CallLimits) -> Self {
        Self {
            ready: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            reassembly: Budget::new(limits.max_reassembly_bytes),
            limits,
        }
    }

    pub(super) fn timeouts(&self) -> ClientTimeouts {
        ClientTimeouts {
            first_message: self.limits.first_message_timeout,
            idle: self.limits.idle_timeout,
        }
    }

    /// The model is loaded and warm: requests are served from now on.
    pub(in crate::grpc) fn set_ready(&self, infer: Arc<Infer>, on: RunningOn) {
        let _ = self.ready.set(Ready { infer, on });
    }

    /// New requests get UNAVAILABLE; open streams are asked to finish.
    pub(in crate::grpc) fn begin_shutdown(&self) {
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
