//! The one place where the core's errors become gRPC status codes, and where tonic's own
//! answers (an oversized or undecodable message) get the codes this API documents.

use std::time::Duration;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// How long an overloaded server asks a client to wait before it retries (`google.rpc.RetryInfo`
/// in the status details). A queue of `--max-queue` jobs or a stream slot frees up within about a
/// batch or a second on any device; clients add their own backoff and jitter on top.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        if e.is_overload() {
            // Overload passes; a size limit would be refused again, so it gets no retry hint.
            return Status::with_error_details(
                code(&e),
                e.to_string(),
                ErrorDetails::with_retry_info(Some(RETRY_AFTER)),
            );
        }
        Status::new(code(&e), e.to_string())
    }
}

fn code(e: &Error) -> Code {
    match e {
        _ if e.is_limit() => Code::ResourceExhausted,
        Error::Input { source, .. } => code(source),
        Error::Image(_) | Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::DeadlineExceeded(_) | Error::Stale(_) => Code::DeadlineExceeded,
        Error::Unavailable(_) | Error::Loading(_) => Code::Unavailable,
        Error::NotFound(_) => Code::NotFound,
        Error::Model(_) | Error::Inference(_) => Code::Internal,
    }
}

/// A client message tonic could not take, as this API answers it: a message over
/// `max_decoding_message_size` (tonic: OUT_OF_RANGE; gRPC's own implementations and this API:
/// RESOURCE_EXHAUSTED, with a hint), or one that is not valid protobuf — e.g. a label that is
/// not UTF-8 (tonic: INTERNAL, "failed to decode Protobuf message"; it is the client's message
/// that is wrong, so INVALID_ARGUMENT).
pub fn remap_incoming(status: Status, limit: usize) -> Status {
    if is_too_large(status.code(), status.message()) {
        return Status::resource_exhausted(message_too_large(status.message(), limit));
    }
    if is_undecodable(status.code(), status.message()) {
        return Status::invalid_argument(undecodable(status.message()));
    }
    status
}

fn is_too_large(code: Code, message: &str) -> bool {
    code == Code::OutOfRange && message.contains("message length too large")
}

fn is_undecodable(code: Code, message: &str) -> bool {
    code == Code::Internal && message.contains("failed to decode Protobuf message")
}

fn undecodable(original: &str) -> String {
    format!(
        "{original}: the request is not a valid message of this API (strings must be UTF-8); fix the client's message"
    )
}

pub fn message_too_large(original: &str, limit: usize) -> String {
    format!(
        "{original} (--max-message-bytes {limit}); send large images with siglip.v1's Upload, in \
         chunks"
    )
}

/// [`remap_incoming`] for unary calls, where tonic answers before our handler runs: rewrites
/// the trailers-only response. Returns the status when it rewrote one (the handler never ran,
/// so the caller counts the call).
pub fn remap_response<B>(response: &mut http::Response<B>, limit: usize) -> Option<Status> {
    let headers = response.headers_mut();
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)?;
    let original = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(|m| percent_decode_str(m).decode_utf8_lossy().into_owned())
        .unwrap_or_default();
    let status = if is_too_large(code, &original) {
        Status::resource_exhausted(message_too_large(&original, limit))
    } else if is_undecodable(code, &original) {
        Status::invalid_argument(undecodable(&original))
    } else {
        return None;
    };
    let encoded = utf8_percent_encode(status.message(), GRPC_MESSAGE).to_string();
    headers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    if let Ok(value) = http::HeaderValue::from_str(&encoded) {
        headers.insert("grpc-message", value);
    }
    Some(status)
}

/// grpc-message is percent-encoded: every byte outside printable ASCII, and `%` itself.
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::image::ImageError;

    #[test]
    fn each_error_gets_its_code() {
        let cases = [
            (Error::Image(ImageError::Empty), Code::InvalidArgument),
            (
                Error::Image(ImageError::TooLarge { bytes: 2, max: 1 }),
                Code::ResourceExhausted,
            ),
            (
                Error::InvalidArgument("no texts".into()),
                Code::InvalidArgument,
            ),
            (
                Error::ResourceExhausted("queue full".into()),
                Code::ResourceExhausted,
            ),
            (
                Error::DeadlineExceeded("late".into()),
                Code::DeadlineExceeded,
            ),
            (Error::Stale("waited 90 ms".into()), Code::DeadlineExceeded),
            (Error::Unavailable("loading".into()), Code::Unavailable),
            (Error::Inference("CUDA error".into()), Code::Internal),
            (Error::Model("bad manifest".into()), Code::Internal),
        ];
        for (error, code) in cases {
            let message = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{message}");
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn oversized_messages_become_resource_exhausted_with_a_hint() {
        let tonic_says = Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        let status = remap_incoming(tonic_says, 4194304);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("Upload") && status.message().contains("--max-message-bytes")
        );
        let other = remap_incoming(Status::out_of_range("something else"), 1);
        assert_eq!(other.code(), Code::OutOfRange);
    }

    #[test]
    fn undecodable_messages_become_invalid_argument() {
        let tonic_says = Status::internal(
            "failed to decode Protobuf message: ClassifyRequest.texts: invalid string value: data is not UTF-8 encoded",
        );
        let status = remap_incoming(tonic_says, 1);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("UTF-8"), "{}", status.message());
        let mut response =
            Status::internal("failed to decode Protobuf message: bad").into_http::<()>();
        let remapped = remap_response(&mut response, 1).expect("remapped");
        assert_eq!(remapped.code(), Code::InvalidArgument);
        assert_eq!(response.headers()["grpc-status"], "3");
        let mut other = Status::internal("libtorch failed").into_http::<()>();
        assert!(remap_response(&mut other, 1).is_none());
        assert_eq!(other.headers()["grpc-status"], "13");
    }

    #[test]
    fn overload_carries_a_retry_hint_and_a_size_limit_does_not() {
        let overload = Status::from(Error::ResourceExhausted("queue full".into()).about("image 0"));
        assert_eq!(overload.code(), Code::ResourceExhausted);
        let hint = overload.get_details_retry_info().expect("RetryInfo");
        assert_eq!(hint.retry_delay, Some(RETRY_AFTER));
        let limit = Status::from(Error::Image(ImageError::TooLarge { bytes: 2, max: 1 }));
        assert_eq!(limit.code(), Code::ResourceExhausted);
        assert!(limit.get_details_retry_info().is_none());
    }
}
