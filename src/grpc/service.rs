//! The `siglip.v1.Siglip` service: thin handlers that convert messages and call the core.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, OnceLock,
    },
    time::Instant,
};

use ::metrics::{counter, gauge, histogram};
use tokio::sync::{watch, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

use super::{convert, pb, status::remap_message_too_large, stream, Limits};
use crate::error::Error;
use crate::infer::{ImageInput, Infer};
use crate::metrics;
use crate::model::device::DType;

/// What every handler shares: the core once the model is ready, and the server's lifecycle.
pub struct State {
    ready: OnceLock<Ready>,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
    pub(super) limits: Limits,
    pub(super) streams: Arc<Semaphore>,
}

/// Set once, when the model is loaded and warm.
struct Ready {
    infer: Arc<Infer>,
    on: RunningOn,
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

impl State {
    pub fn new(limits: Limits) -> Self {
        Self {
            ready: OnceLock::new(),
            shutting_down: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            limits,
        }
    }

    /// The model is loaded and warm: requests are served from now on.
    pub fn set_ready(&self, infer: Arc<Infer>, on: RunningOn) {
        let _ = self.ready.set(Ready { infer, on });
    }

    /// New requests get UNAVAILABLE; open streams are asked to finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.shutdown.send_replace(true);
    }

    pub(super) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(super) fn infer(&self) -> Result<Arc<Infer>, Status> {
        self.ready().map(|r| Arc::clone(&r.infer))
    }

    fn ready(&self) -> Result<&Ready, Status> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "server is shutting down: retry on another replica",
            ));
        }
        self.ready.get().ok_or_else(|| Status::unavailable("model is still loading: retry shortly (the health service says when it is SERVING)"))
    }
}

pub struct SiglipService {
    state: Arc<State>,
}

impl SiglipService {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::StreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::siglip_server::Siglip for SiglipService {
    async fn classify(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        observed("Classify", self.classify_call(request)).await
    }

    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        observed("Upload", self.upload_call(request)).await
    }

    type StreamStream = ResponseStream;

    /// Counted when the stream ends (in `stream::run`), or here when it cannot start.
    async fn stream(
        &self,
        request: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let started = Instant::now();
        let opened = self.stream_call(request).await;
        if let Err(status) = &opened {
            record("Stream", status, started);
        }
        opened
    }

    async fn embed_image(
        &self,
        request: Request<pb::EmbedImageRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        observed("EmbedImage", self.embed_image_call(request)).await
    }

    async fn embed_text(
        &self,
        request: Request<pb::EmbedTextRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        observed("EmbedText", self.embed_text_call(request)).await
    }

    async fn get_model_info(
        &self,
        request: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        observed("GetModelInfo", self.get_model_info_call(request)).await
    }
}

/// Counts, times and logs one call, and tracks it as in flight. A call dropped before it
/// finishes (the client went away) is counted as CANCELLED.
async fn observed<T>(
    method: &'static str,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    struct InFlight {
        method: &'static str,
        started: Instant,
        finished: bool,
    }
    impl Drop for InFlight {
        fn drop(&mut self) {
            gauge!(metrics::INFLIGHT).decrement(1.0);
            if !self.finished {
                record(self.method, &client_gone(), self.started);
            }
        }
    }
    gauge!(metrics::INFLIGHT).increment(1.0);
    let mut in_flight = InFlight {
        method,
        started: Instant::now(),
        finished: false,
    };
    let result = call.await;
    in_flight.finished = true;
    match &result {
        Ok(_) => record_ok(method, in_flight.started),
        Err(status) => record(method, status, in_flight.started),
    }
    result
}

/// How a call whose client went away ends: counted as CANCELLED; nobody receives it.
pub(super) fn client_gone() -> Status {
    Status::cancelled("the client went away")
}

pub(super) fn record_ok(method: &'static str, started: Instant) {
    counter!(metrics::GRPC_REQUESTS, "method" => method, "code" => code_name(Code::Ok))
        .increment(1);
    histogram!(metrics::GRPC_DURATION, "method" => method).record(started.elapsed());
    tracing::debug!(
        method,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request handled"
    );
}

pub(super) fn record(method: &'static str, status: &Status, started: Instant) {
    counter!(metrics::GRPC_REQUESTS, "method" => method, "code" => code_name(status.code()))
        .increment(1);
    histogram!(metrics::GRPC_DURATION, "method" => method).record(started.elapsed());
    if status.code() == Code::Cancelled {
        // Clients hang up all the time (a closed video stream): not a server problem.
        tracing::debug!(method, "client went away");
    } else {
        tracing::warn!(
            method,
            code = code_name(status.code()),
            message = status.message(),
            "request failed"
        );
    }
}

/// The canonical upper-case name of a status code, as gRPC tooling prints it.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The handlers proper; the trait implementation above adds metrics and logs around them.
impl SiglipService {
    async fn classify_call(
        &self,
        request: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let infer = self.state.infer()?;
        let deadline = convert::deadline(request.metadata());
        let req = request.into_inner();
        let image = convert::image(req.image)?;
        let filter = convert::filter(req.options)?;
        let result =
            convert::with_deadline(deadline, infer.classify(image, req.texts, filter, deadline))
                .await?;
        Ok(Response::new(pb::ClassifyResponse {
            scores: convert::scores(result.scores),
            timings: Some(convert::timings(result.timings)),
        }))
    }

    async fn upload_call(
        &self,
        request: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let infer = self.state.infer()?;
        let deadline = convert::deadline(request.metadata());
        let limit = self.state.limits.max_message_bytes;
        let mut messages = request.into_inner();
        let work = async {
            let (header, bytes) =
                receive_upload(&mut messages, infer.limits().image.max_bytes, limit).await?;
            let filter = convert::filter(header.options)?;
            infer
                .classify(ImageInput::Encoded(bytes), header.texts, filter, deadline)
                .await
                .map_err(Status::from)
        };
        let result = convert::with_deadline(deadline, work).await?;
        Ok(Response::new(pb::ClassifyResponse {
            scores: convert::scores(result.scores),
            timings: Some(convert::timings(result.timings)),
        }))
    }

    async fn stream_call(
        &self,
        request: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let infer = self.state.infer()?;
        let permit = Arc::clone(&self.state.streams).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many open streams (limit {}, --max-streams): retry later or on another replica",
                self.state.limits.max_streams
            ))
        })?;
        let output = stream::run(infer, Arc::clone(&self.state), request.into_inner(), permit);
        Ok(Response::new(Box::pin(output)))
    }

    async fn embed_image_call(
        &self,
        request: Request<pb::EmbedImageRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let infer = self.state.infer()?;
        let deadline = convert::deadline(request.metadata());
        let images = request
            .into_inner()
            .images
            .into_iter()
            .enumerate()
            .map(|(i, img)| {
                convert::image(Some(img)).map_err(|e| e.about(format!("image {i}")).into())
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let (embeddings, timings) =
            convert::with_deadline(deadline, infer.embed_images(images, deadline)).await?;
        Ok(Response::new(embed_response(embeddings, timings)))
    }

    async fn embed_text_call(
        &self,
        request: Request<pb::EmbedTextRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let infer = self.state.infer()?;
        let deadline = convert::deadline(request.metadata());
        let texts = request.into_inner().texts;
        let (embeddings, timings) =
            convert::with_deadline(deadline, infer.embed_texts(texts, deadline)).await?;
        Ok(Response::new(embed_response(embeddings, timings)))
    }

    async fn get_model_info_call(
        &self,
        _: Request<pb::GetModelInfoRequest>,
    ) -> Result<Response<pb::ModelInfo>, Status> {
        let ready = self.state.ready()?;
        let m = ready.infer.manifest();
        Ok(Response::new(pb::ModelInfo {
            model_id: m.model_id.clone(),
            architecture: m.architecture.clone(),
            image_size: m.image.size,
            embedding_dim: m.embedding_dim as u32,
            max_text_tokens: m.text.max_length as u32,
            device: ready.on.device.clone(),
            dtype: ready.on.dtype.name().into(),
            backend: ready.on.backend.into(),
            image_convention: ready.infer.convention().name().into(),
            random_weights: m.source.random_weights,
            server_version: env!("CARGO_PKG_VERSION").into(),
            revision: m.source.revision.clone().unwrap_or_default(),
        }))
    }
}

fn embed_response(
    embeddings: crate::model::scores::Embeddings,
    timings: crate::infer::Timings,
) -> pb::EmbedResponse {
    pb::EmbedResponse {
        embeddings: embeddings
            .rows()
            .map(|row| pb::Embedding {
                values: row.to_vec(),
            })
            .collect(),
        timings: Some(convert::timings(timings)),
    }
}

/// Reads an Upload: a header, then chunks adding up to exactly the declared size.
async fn receive_upload(
    messages: &mut Streaming<pb::UploadRequest>,
    max_image_bytes: usize,
    max_message_bytes: usize,
) -> Result<(pb::UploadHeader, Vec<u8>), Status> {
    use pb::upload_request::Msg;
    let next = |m: Option<Result<pb::UploadRequest, Status>>| -> Result<Option<Msg>, Status> {
        match m {
            None => Ok(None),
            Some(Err(status)) => Err(remap_message_too_large(status, max_message_bytes)),
            Some(Ok(req)) => req.msg.map(Some).ok_or_else(|| {
                Status::invalid_argument("empty UploadRequest: set header or chunk")
            }),
        }
    };
    let header = match next(messages.next().await)? {
        Some(Msg::Header(h)) => h,
        Some(Msg::Chunk(_)) => {
            return Err(Status::invalid_argument(
                "Upload protocol: the first message must be an UploadHeader, got a chunk",
            ))
        }
        None => {
            return Err(Status::invalid_argument(
                "Upload protocol: the stream ended before the header",
            ))
        }
    };
    let total = usize::try_from(header.total_bytes).unwrap_or(usize::MAX);
    if total == 0 {
        return Err(Status::invalid_argument(
            "Upload protocol: the header must declare total_bytes, the size of the encoded image",
        ));
    }
    if total > max_image_bytes {
        return Err(Error::Image(crate::model::image::ImageError::TooLarge {
            bytes: total,
            max: max_image_bytes,
        })
        .into());
    }
    // Grown as chunks arrive: the declared size is the client's word, not yet memory to commit.
    let mut bytes = Vec::with_capacity(total.min(1 << 20));
    while let Some(msg) = next(messages.next().await)? {
        match msg {
            Msg::Chunk(chunk) => {
                if bytes.len() + chunk.len() > total {
                    return Err(Status::invalid_argument(format!(
                        "Upload protocol: chunks carry more than the {total} bytes declared in the header"
                    )));
                }
                bytes.extend_from_slice(&chunk);
            }
            Msg::Header(_) => {
                return Err(Status::invalid_argument(
                    "Upload protocol: a second header arrived after chunks",
                ))
            }
        }
    }
    if bytes.len() != total {
        return Err(Status::invalid_argument(format!(
            "Upload protocol: the stream ended after {} of the {total} bytes declared in the header",
            bytes.len()
        )));
    }
    Ok((header, bytes))
}
