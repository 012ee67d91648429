//! The one place where the core's errors become gRPC status codes.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use tonic::{Code, Status};

use crate::error::Error;

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        Status::new(code(&e), e.to_string())
    }
}

fn code(e: &Error) -> Code {
    match e {
        _ if e.is_limit() => Code::ResourceExhausted,
        Error::Input { source, .. } => code(source),
        Error::Image(_) | Error::InvalidArgument(_) => Code::InvalidArgument,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Model(_) | Error::Inference(_) => Code::Internal,
    }
}

/// tonic answers a message over `max_decoding_message_size` with OUT_OF_RANGE; gRPC's own
/// implementations (and this API's documentation) use RESOURCE_EXHAUSTED, with a hint.
pub fn remap_message_too_large(status: Status, limit: usize) -> Status {
    if status.code() == Code::OutOfRange && status.message().contains("message length too large") {
        return Status::resource_exhausted(message_too_large(status.message(), limit));
    }
    status
}

pub fn message_too_large(original: &str, limit: usize) -> String {
    format!("{original} (--max-message-bytes {limit}); send large images with Upload, in chunks")
}

/// Same remapping for unary calls, where tonic answers before our handler runs: rewrites the
/// trailers-only response.
pub fn remap_response<B>(mut response: http::Response<B>, limit: usize) -> http::Response<B> {
    let headers = response.headers_mut();
    let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| {
                percent_decode_str(m)
                    .decode_utf8_lossy()
                    .contains("message length too large")
            });
    if too_large {
        let original = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .map(|m| percent_decode_str(m).decode_utf8_lossy().into_owned())
            .unwrap_or_default();
        let message =
            utf8_percent_encode(&message_too_large(&original, limit), GRPC_MESSAGE).to_string();
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        if let Ok(value) = http::HeaderValue::from_str(&message) {
            headers.insert("grpc-message", value);
        }
    }
    response
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
        let status = remap_message_too_large(tonic_says, 4194304);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("Upload") && status.message().contains("--max-message-bytes")
        );
        let other = remap_message_too_large(Status::out_of_range("something else"), 1);
        assert_eq!(other.code(), Code::OutOfRange);
    }
}
