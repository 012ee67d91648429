//! Size limits checked from the header, before any pixel buffer is allocated.

use super::ImageError;

/// Upper bounds on what `decode` and `from_raw` accept.
///
/// The pixel and side limits are checked against the header before decoding, so a small file
/// that claims a huge canvas (a decompression bomb) is rejected without allocating it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest encoded image, in bytes.
    pub max_bytes: usize,
    /// Largest width × height.
    pub max_pixels: u64,
    /// Longest width or height.
    pub max_side: u32,
    /// Most scans in a JPEG: each scan of a progressive JPEG costs a pass over every block, so
    /// a small file of thousands of empty scans costs seconds to decode.
    pub max_jpeg_scans: usize,
}

impl ImageLimits {
    /// 32 MiB, 50 megapixels, 20 000 pixels a side, 100 JPEG scans: room for any camera
    /// photo. Decoding one 50-megapixel image peaks at 3.2 (baseline JPEG, 8-bit PNG, BMP, raw)
    /// to 11 (16-bit RGBA PNG) bytes a pixel, 160 to 550 MB (`tests/decode.rs`,
    /// `decode_memory_peak`); `--max-decoding-pixels` bounds how many decode at once. The
    /// `--max-image-*` and `--max-jpeg-scans` flags default to these.
    pub const DEFAULT: Self = Self {
        max_bytes: 32 << 20,
        max_pixels: 50_000_000,
        max_side: 20_000,
        max_jpeg_scans: 100,
    };
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Widest pixel any supported decoder produces (RGBA, 16 bits a channel), in bytes.
const MAX_BYTES_PER_PIXEL: u64 = 8;

impl ImageLimits {
    pub(super) fn check_bytes(&self, len: usize) -> Result<(), ImageError> {
        if len == 0 {
            return Err(ImageError::Empty);
        }
        if len > self.max_bytes {
            return Err(ImageError::TooLarge {
                bytes: len,
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Checks header dimensions. The pixel count is checked first because it is the limit a
    /// decompression bomb trips and the one worth naming in the error.
    pub(super) fn check_dimensions(&self, width: u32, height: u32) -> Result<(), ImageError> {
        if width == 0 || height == 0 {
            return Err(ImageError::Corrupt(format!(
                "the header gives a size of {width}x{height} pixels"
            )));
        }
        if u64::from(width) * u64::from(height) > self.max_pixels {
            return Err(ImageError::TooManyPixels {
                width,
                height,
                max: self.max_pixels,
            });
        }
        if width > self.max_side || height > self.max_side {
            return Err(ImageError::SideTooLong {
                width,
                height,
                max: self.max_side,
            });
        }
        Ok(())
    }

    /// A memory bound for the `image` crate's decoders and their working buffers. Width and
    /// height are left to `check_dimensions`, which runs right after the header is read and
    /// gives the more useful message.
    ///
    /// The PNG decoder spends its bound on metadata alone (the pixels go to a buffer reserved
    /// by `decode`): text chunks, EXIF, and an ICC profile that it inflates and silently drops
    /// when it is over the bound. No honest image carries more metadata than its own encoded
    /// size, so that is the bound: a compressed ICC profile of hundreds of megabytes (a bomb)
    /// then costs at most `max_bytes` of memory.
    pub(super) fn to_image_limits(&self, format: image::ImageFormat) -> image::Limits {
        let mut limits = image::Limits::no_limits();
        limits.max_alloc = Some(match format {
            image::ImageFormat::Png => self.max_bytes as u64,
            _ => self.max_decoded_bytes(),
        });
        limits
    }

    /// The largest decoded buffer an image within the limits can need.
    pub(super) fn max_decoded_bytes(&self) -> u64 {
        self.max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL)
    }
}
