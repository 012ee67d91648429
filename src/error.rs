//! The crate's one error type. Each variant says *whose* problem it is; `grpc::api::status`
//! maps them to status codes in one place. Every message is one a client can act on: it says what
//! is wrong with the input and, for limits, which server flag raises the limit.

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
    /// The request names a model the repository does not have.
    #[error("{0}")]
    NotFound(String),
    /// The model named is still loading: the same request succeeds once it is warm.
    #[error("{0}")]
    Loading(String),
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
    /// A model still loading is "overloaded" in this sense too: retrying shortly succeeds.
    pub fn is_overload(&self) -> bool {
        match self {
            Error::Input { source, .. } => source.is_overload(),
            Error::ResourceExhausted(_) => true,
            Error::Loading(_) => true,
            _ => false,
        }
    }
}

/// Why an image could not be turned into model input.
#[derive(thiserror::Error, Debug)]
pub enum ImageError {
    #[error("image is empty (0 bytes)")]
    Empty,
    #[error("image of {bytes} bytes exceeds the limit of {max} bytes (--max-image-bytes)")]
    TooLarge { bytes: usize, max: usize },
    #[error(
        "image of {width}x{height} pixels exceeds the limit of {max} pixels (--max-image-pixels)"
    )]
    TooManyPixels { width: u32, height: u32, max: u64 },
    #[error(
        "image of {width}x{height} pixels has a side longer than {max} pixels (--max-image-side)"
    )]
    SideTooLong { width: u32, height: u32, max: u32 },
    #[error(
        "not an image: the data starts with no known image signature (supported: {SUPPORTED})"
    )]
    NotAnImage,
    #[error("unsupported image format: {0} (supported: {SUPPORTED})")]
    UnsupportedFormat(String),
    #[error("image is corrupt: {0}")]
    Corrupt(String),
    #[error("image is truncated: {0} (Pillow refuses it too)")]
    Truncated(String),
    /// The image's own metadata (an ICC profile, text chunks, a tag array) is larger than any
    /// image within the limits needs: the image is hostile or broken, and retrying cannot help.
    #[error("image is corrupt: its metadata exceeds the decoder's memory limit: {0}")]
    MemoryLimit(String),
    /// The server could not allocate the decoded image's buffer: its problem, not the image's.
    #[error("server out of memory decoding the image: {0}; retry with backoff")]
    OutOfMemory(String),
    #[error(
        "JPEG has more than {max} scans (--max-jpeg-scans); encoders write about 10 (progressive) \
         or 1 (baseline): re-encode the image"
    )]
    TooManyScans { max: usize },
    #[error("raw frame is invalid: {0}")]
    BadRawFrame(String),
}

/// The formats `decode` accepts, for error messages.
const SUPPORTED: &str = "JPEG, PNG, GIF, WebP, BMP, TIFF";
