//! Every wait on a client has an end: the first message of a Stream, an Upload or a ModelStreamInfer
//! (`--first-message-timeout-seconds`) and each one after it (`--idle-timeout-seconds`).
//!
//! A wait that runs out ends the call with DEADLINE_EXCEEDED, the code gRPC's own servers give
//! a call whose time ran out (a server-side deadline; tonic's `Server::timeout` says CANCELLED,
//! which clients read as "the caller gave up" — here it is the server that gave up).

use std::{future::Future, time::Duration};

use tonic::Status;

#[derive(Debug, Clone, Copy)]
pub(in crate::grpc) struct ClientTimeouts {
    /// For the first message (a Stream's config, an Upload's header, a ModelStreamInfer's first request).
    pub(in crate::grpc) first_message: Duration,
    /// Between messages after the first; and for a send to the client to make progress.
    pub(in crate::grpc) idle: Duration,
}

impl ClientTimeouts {
    /// `receive` (the first message of a `protocol` call, `what`), or DEADLINE_EXCEEDED.
    pub(in crate::grpc) async fn first<T>(
        &self,
        protocol: &str,
        what: &str,
        receive: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        tokio::time::timeout(self.first_message, receive)
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "{protocol}: no first message within {}s (--first-message-timeout-seconds): \
                     send the {what} as soon as the call opens",
                    self.first_message.as_secs_f64(),
                ))
            })?
    }

    /// `receive` (a later message of a `protocol` call), or DEADLINE_EXCEEDED.
    pub(in crate::grpc) async fn next<T>(
        &self,
        protocol: &str,
        receive: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        tokio::time::timeout(self.idle, receive).await.map_err(|_| {
            Status::deadline_exceeded(format!(
                "{protocol}: no message for {}s (--idle-timeout-seconds): the call was idle too long; \
                 open a new one when there is more to send",
                self.idle.as_secs_f64()
            ))
        })?
    }
}
