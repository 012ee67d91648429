//! Errors a client can act on: each message says what is wrong with the input and, for limits,
//! which server flag raises the limit.

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
