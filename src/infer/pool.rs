//! The CPU work of a request — decoding and preprocessing an image, tokenising a label set —
//! runs on tokio's blocking pool, never on the async threads, and at most `--preprocess-threads`
//! at once, in arrival order. Tokenising has a lane of its own of half as many (at least one):
//! images never wait in line behind a flood of new labels, and text never takes more than half
//! the pool.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Which lane a piece of work takes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lane {
    Images,
    Texts,
}

pub(super) struct CpuPool {
    images: Arc<Semaphore>,
    texts: Arc<Semaphore>,
}

impl CpuPool {
    /// `threads`: at most this many at once (0: one per core).
    pub(super) fn new(threads: usize) -> Self {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        Self {
            images: Arc::new(Semaphore::new(threads)),
            texts: Arc::new(Semaphore::new(threads.div_ceil(2))),
        }
    }

    /// Runs `work` once its lane has room. What `held` holds is given back when the work ends,
    /// not when the caller stops waiting: a caller that goes away (cancelled, past its deadline,
    /// failed elsewhere) must not free a slot while its work still runs.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        lane: Lane,
        held: impl Send + 'static,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permits = match lane {
            Lane::Images => &self.images,
            Lane::Texts => &self.texts,
        };
        let permit = Arc::clone(permits)
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("server is shutting down".into()))?;
        // The work's stages (and its logs) belong to the call that asked for it.
        let call = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _in_call = call.enter();
            let _held = (permit, held);
            work()
        })
        .await
        .map_err(|e| {
            let task = match lane {
                Lane::Images => "preprocessing",
                Lane::Texts => "tokenisation",
            };
            Error::Inference(format!("{task} task failed: {e}"))
        })?
    }
}
