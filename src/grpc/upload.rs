//! The `Upload` call: an image over the message limit, sent as a header (labels, options, total
//! size) and then chunks adding up to exactly that size, classified like `Classify`.

use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::{
    chunks::{ChunkError, Reassembly},
    convert, pb,
    pb::upload_request::Msg,
    state::State,
    status::remap_message_too_large,
};
use crate::infer::ImageInput;

const PROTOCOL: &str = "Upload";

pub(super) async fn classify(
    state: &State,
    request: Request<Streaming<pb::UploadRequest>>,
) -> Result<Response<pb::ClassifyResponse>, Status> {
    let infer = state.infer()?;
    let deadline = convert::deadline(request.metadata());
    let max_message_bytes = state.limits.max_message_bytes;
    let mut messages = request.into_inner();
    let work = async {
        let (header, bytes) = receive(
            &mut messages,
            infer.limits().image.max_bytes,
            max_message_bytes,
        )
        .await?;
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

/// Reads the header, then the chunks.
async fn receive(
    messages: &mut Streaming<pb::UploadRequest>,
    max_image_bytes: usize,
    max_message_bytes: usize,
) -> Result<(pb::UploadHeader, Vec<u8>), Status> {
    let violation = |what: &str| Status::invalid_argument(format!("{PROTOCOL} protocol: {what}"));
    let next = |m: Option<Result<pb::UploadRequest, Status>>| -> Result<Option<Msg>, Status> {
        match m {
            None => Ok(None),
            Some(Err(status)) => Err(remap_message_too_large(status, max_message_bytes)),
            Some(Ok(req)) => req.msg.map(Some).ok_or_else(|| {
                Status::invalid_argument("empty UploadRequest: set header or chunk")
            }),
        }
    };
    let chunk_error = |e: ChunkError| Status::from(e.into_error(PROTOCOL));
    let header = match next(messages.next().await)? {
        Some(Msg::Header(h)) => h,
        Some(Msg::Chunk(_)) => {
            return Err(violation(
                "the first message must be an UploadHeader, got a chunk",
            ))
        }
        None => return Err(violation("the stream ended before the header")),
    };
    let mut image =
        Reassembly::declared(header.total_bytes, max_image_bytes).map_err(chunk_error)?;
    while let Some(msg) = next(messages.next().await)? {
        match msg {
            Msg::Chunk(chunk) => image.push(&chunk).map_err(chunk_error)?,
            Msg::Header(_) => return Err(violation("a second header arrived after chunks")),
        }
    }
    let bytes = image.finish().map_err(chunk_error)?;
    Ok((header, bytes))
}
