//! The `siglip.v1.Siglip` API: thin adapters from its messages to the core ([`crate::infer`]),
//! which knows nothing of gRPC.
//!
//! - `service`: the RPCs, each counted (`grpc::calls`), converted (`convert`) and handed to the
//!   core of the model it names; Upload (`upload`) and Stream (`stream`) keep their protocols in
//!   their own modules, images in chunks are put back together under one budget (`chunks`);
//!   `models`: GetModelInfo and ListModels;
//! - `status`: core errors → status codes, in one place; `malformed`: calls tonic refuses
//!   before a handler runs, answered with this API's codes;
//! - `timeouts`: every wait on a client has an end; `lifecycle`: loading → serving → shutting
//!   down, the models, and what every handler shares.
//!
//! `chunks`, `convert` and `stream::settings` are public for the fuzz targets (`fuzz/`).

pub mod chunks;
pub mod convert;
mod lifecycle;
mod malformed;
mod models;
mod service;
pub(in crate::grpc) mod status;
pub mod stream;
pub(in crate::grpc) mod timeouts;
mod upload;

use std::time::Duration;

pub(super) use lifecycle::Lifecycle;
pub(super) use malformed::MalformedCalls;
pub(super) use service::SiglipService;

use super::pb;

/// What the API allows one call, beyond the core's limits.
#[derive(Debug, Clone)]
pub struct CallLimits {
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
