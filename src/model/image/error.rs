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
    #[error("decoding the image would exceed the memory limit: {0}")]
    MemoryLimit(String),
    #[error("raw frame is invalid: {0}")]
    BadRawFrame(String),
}

/// The formats `decode` accepts, for error messages.
const SUPPORTED: &str = "JPEG, PNG, GIF, WebP, BMP, TIFF";
