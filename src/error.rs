//! The crate's one error type. Each variant says *whose* problem it is; `grpc` maps them to
//! status codes in one place.

use crate::model::image::ImageError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's image cannot be used (corrupt, unsupported, over a limit, ...).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The caller asked for something malformed (no texts, a bad option, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The server's capacity is in use (a full queue, too many images pending or streams open,
    /// the reassembly budget): the same request can succeed later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller's deadline passed before the work was done; the work was dropped.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A stream frame waited longer than its stream's `max_age_ms` before inference: it is
    /// dropped and counted, never answered late (so this never reaches a client as a status).
    #[error("stale: {0}")]
    Stale(String),
    /// Not ready yet, or shutting down: try again elsewhere or later.
    #[error("{0}")]
    Unavailable(String),
    /// The model directory or device could not be used (startup problems).
    #[error("{0}")]
    Model(String),
    /// libtorch failed while running the model: the server's problem, not the caller's.
    #[error("inference failed: {0}")]
    Inference(String),
    /// An error about one input of a request that carries several ("image 3: ..."); it keeps
    /// the kind, and so the status code, of the error inside.
    #[error("{input}: {source}")]
    Input {
        input: String,
        #[source]
        source: Box<Error>,
    },
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Inference(e.to_string())
    }
}

impl Error {
    /// Names the input of a multi-input request this error is about.
    pub fn about(self, input: impl Into<String>) -> Self {
        Error::Input {
            input: input.into(),
            source: Box::new(self),
        }
    }

    /// True when the request was refused for exceeding a configured limit rather than for being
    /// malformed (RESOURCE_EXHAUSTED rather than INVALID_ARGUMENT).
    pub fn is_limit(&self) -> bool {
        match self {
            Error::Input { source, .. } => source.is_limit(),
            Error::ResourceExhausted(_) => true,
            Error::Image(e) => matches!(
                e,
                ImageError::TooLarge { .. }
                    | ImageError::TooManyPixels { .. }
                    | ImageError::SideTooLong { .. }
                    | ImageError::OutOfMemory(_)
            ),
            _ => false,
        }
    }

    /// True when the server is momentarily overloaded (the client should retry after a pause),
    /// as opposed to a request that is over a size limit and would be refused again.
    pub fn is_overload(&self) -> bool {
        match self {
            Error::Input { source, .. } => source.is_overload(),
            Error::ResourceExhausted(_) => true,
            _ => false,
        }
    }
}
