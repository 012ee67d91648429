//! The `Upload` call: an image over the message limit, sent as a header (labels, options, total
//! size) and then chunks adding up to exactly that size, classified like `Classify`.
//!
//! The header is checked in full (labels, options, size) before any chunk is taken, and the
//! chunks are held under the server's reassembly budget; the call has a deadline (the caller's,
//! or `--request-timeout-seconds`) and each message must arrive in time (`timeouts`).

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{
    chunks::{ChunkError, Reassembly},
    convert,
    lifecycle::Lifecycle,
    pb,
    pb::upload_request::Msg,
    status::remap_incoming,
};
use crate::grpc::calls::CallModel;
use crate::infer::ImageInput;
use crate::model::{image::Preprocess, scores::ScoreFilter};
use crate::repository::Served;
use crate::telemetry;

const PROTOCOL: &str = "Upload";

/// The header names the model (`model`, for the call's metrics, once it is read).
pub(super) async fn classify(
    lifecycle: &Lifecycle,
    model: &CallModel,
    request: Request<Streaming<pb::UploadRequest>>,
) -> Result<Response<pb::ClassifyResponse>, Status> {
    lifecycle.models()?;
    let deadline = convert::deadline(request.metadata(), lifecycle.limits.request_timeout);
    let mut messages = request.into_inner();
    let work = async {
        let Received {
            served,
            texts,
            filter,
            prep,
            bytes,
        } = receive(lifecycle, model, &mut messages).await?;
        served
            .infer
            .classify(ImageInput::Encoded(bytes), texts, filter, &prep, deadline)
            .await
            .map_err(Status::from)
    };
    let result = convert::with_deadline(deadline, work).await?;
    Ok(Response::new(pb::ClassifyResponse {
        scores: convert::scores(result.scores),
        timings: Some(convert::timings(result.timings)),
    }))
}

/// What an Upload carries: the model that answers it, the labels, the options and the image.
struct Received {
    served: std::sync::Arc<Served>,
    texts: Vec<String>,
    filter: ScoreFilter,
    /// The image's preprocessing at the options' patch budget.
    prep: Preprocess,
    bytes: Vec<u8>,
}

/// Reads and checks the header, then the chunks.
async fn receive(
    lifecycle: &Lifecycle,
    model: &CallModel,
    messages: &mut Streaming<pb::UploadRequest>,
) -> Result<Received, Status> {
    let violation = |what: &str| Status::invalid_argument(format!("{PROTOCOL} protocol: {what}"));
    let max_message_bytes = lifecycle.limits.max_message_bytes;
    let next = |m: Option<Result<pb::UploadRequest, Status>>| -> Result<Option<Msg>, Status> {
        match m {
            None => Ok(None),
            Some(Err(status)) => Err(remap_incoming(status, max_message_bytes)),
            Some(Ok(req)) => req.msg.map(Some).ok_or_else(|| {
                Status::invalid_argument("empty UploadRequest: set header or chunk")
            }),
        }
    };
    let chunk_error = |e: ChunkError| Status::from(e.into_error(PROTOCOL));
    let timeouts = lifecycle.timeouts();
    let mut header = match timeouts
        .first(PROTOCOL, "UploadHeader", async {
            next(messages.next().await)
        })
        .await?
    {
        Some(Msg::Header(h)) => h,
        Some(Msg::Chunk(_)) => {
            return Err(violation(
                "the first message must be an UploadHeader, got a chunk",
            ))
        }
        None => return Err(violation("the stream ended before the header")),
    };
    // Everything the header says is checked before a byte of the image is taken: a request that
    // will be refused must not first occupy the reassembly budget.
    model.set(lifecycle.label(&header.model));
    let served = lifecycle.model(&header.model)?;
    let infer = &served.infer;
    infer.check_texts(&header.texts)?;
    let options = header.options.take();
    // Checked before the bytes come: a budget the model does not take fails the upload now.
    let prep = infer.preprocessing(convert::options_patches(options))?;
    let filter = convert::filter(options)?;
    let mut image = Reassembly::declared(
        header.total_bytes,
        infer.limits().image.max_bytes,
        std::sync::Arc::clone(&lifecycle.reassembly),
    )
    .map_err(chunk_error)?;
    let _reassembly = telemetry::stage("reassembly");
    while let Some(msg) = timeouts
        .next(PROTOCOL, async { next(messages.next().await) })
        .await?
    {
        match msg {
            Msg::Chunk(chunk) => image.push(&chunk).map_err(chunk_error)?,
            Msg::Header(_) => return Err(violation("a second header arrived after chunks")),
        }
    }
    let bytes = image.finish().map_err(chunk_error)?;
    Ok(Received {
        served,
        texts: header.texts,
        filter,
        prep,
        bytes,
    })
}
