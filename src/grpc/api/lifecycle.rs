//! What every handler shares: the per-call limits, the models once loading has begun, and the
//! server's lifecycle (loading → serving → shutting down).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, OnceLock,
};

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use super::{chunks::Budget, timeouts::ClientTimeouts, CallLimits};
use crate::error::Error;
use crate::repository::{Repository, Served};

pub(in crate::grpc) struct Lifecycle {
    models: OnceLock<Arc<Repository>>,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
    pub(in crate::grpc) limits: CallLimits,
    streams: Arc<Semaphore>,
    /// Bytes of unfinished images, over all calls (`--max-reassembly-bytes`).
    pub(super) reassembly: Arc<Budget>,
}

impl Lifecycle {
    pub(in crate::grpc) fn new(limits: CallLimits) -> Self {
        Self {
            models: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            reassembly: Budget::new(limits.max_reassembly_bytes),
            limits,
        }
    }

    pub(in crate::grpc) fn timeouts(&self) -> ClientTimeouts {
        ClientTimeouts {
            first_message: self.limits.first_message_timeout,
            idle: self.limits.idle_timeout,
        }
    }

    /// Requests are served from `models` from now on (each model once it is warm).
    pub(in crate::grpc) fn set_models(&self, models: Arc<Repository>) {
        let _ = self.models.set(models);
    }

    /// New requests get UNAVAILABLE; open streams are asked to finish.
    pub(in crate::grpc) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }

    pub(in crate::grpc) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// The version of model `name` ("": the default) that serves calls now.
    pub(in crate::grpc) fn model(&self, name: &str) -> Result<Arc<Served>, Status> {
        Ok(self.models()?.resolve(name)?)
    }

    /// The `model` label of a call's metrics for the name it asked for (empty unless it names a
    /// model of the repository).
    pub(in crate::grpc) fn label(&self, name: &str) -> String {
        self.models
            .get()
            .map(|models| models.label(name))
            .unwrap_or_default()
    }

    /// A slot for a bidirectional call of either API (`--max-streams`), or why there is none.
    pub(in crate::grpc) fn open_stream(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.models()?;
        Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            Status::from(Error::ResourceExhausted(format!(
                "too many open streams (limit {}, --max-streams): retry later or on another replica",
                self.limits.max_streams
            )))
        })
    }

    pub(in crate::grpc) fn models(&self) -> Result<&Arc<Repository>, Status> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "server is shutting down: retry on another replica",
            ));
        }
        self.models.get().ok_or_else(|| {
            Status::unavailable(
                "the server is starting: retry shortly (the health service says when it is SERVING)",
            )
        })
    }
}
