//! The stream's results on their way to the client, where every send has an end.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};
use tonic::Status;

/// What a stream yields: a response, or the status it ends with.
pub(in crate::grpc) type Output<T> = Result<T, Status>;

/// The stream's results on their way to the client. A client that stops reading fills the
/// channel (HTTP/2 flow control stops tonic from taking more); then a send waits at most
/// `--idle-timeout-seconds`, and never past the stream's lifetime, before the stream is given up
/// as stalled: a client that does not read cannot keep its stream, its slot or the server's
/// work.
pub(in crate::grpc) struct Outbox<T> {
    tx: mpsc::Sender<Output<T>>,
    idle: Duration,
    ends_at: Option<tokio::time::Instant>,
    /// Set once when a send gives up: why the stream ends.
    stalled: Arc<watch::Sender<Option<Status>>>,
}

// Not derived: a derived Clone would ask `T: Clone`.
impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            idle: self.idle,
            ends_at: self.ends_at,
            stalled: Arc::clone(&self.stalled),
        }
    }
}

impl<T> Outbox<T> {
    pub(in crate::grpc) fn new(
        tx: mpsc::Sender<Output<T>>,
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
    pub(in crate::grpc) async fn send(&self, response: T) -> bool {
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
    pub(in crate::grpc) async fn stalled(&self) -> Status {
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
    pub(in crate::grpc) fn stall(&self) -> Option<Status> {
        self.stalled.borrow().clone()
    }

    /// Whether the client has gone (tonic dropped the response stream).
    pub(in crate::grpc) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the client has gone (tonic dropped the response stream).
    pub(in crate::grpc) async fn closed(&self) {
        self.tx.closed().await
    }
}
