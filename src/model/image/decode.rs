//! Format detection and the non-JPEG decoders (the `image` crate), with the header checked
//! against the limits before any pixel buffer exists.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use super::transparency::Rule;
use super::{jpeg, orientation, Convention, ImageError, ImageLimits, Transparency};

/// Decodes any supported format to RGB8; see [`super::decode`].
pub(super) fn decode(
    bytes: &[u8],
    limits: &ImageLimits,
    convention: Convention,
    transparency: Transparency,
) -> Result<RgbImage, ImageError> {
    limits.check_bytes(bytes.len())?;
    let format = image::guess_format(bytes).map_err(|_| ImageError::NotAnImage)?;
    match format {
        ImageFormat::Jpeg => jpeg::decode(bytes, limits, convention),
        ImageFormat::Png
        | ImageFormat::Gif
        | ImageFormat::WebP
        | ImageFormat::Bmp
        | ImageFormat::Tiff => {
            catch_decoder_panic(|| decode_other(bytes, format, limits, convention, transparency))
        }
        other => Err(ImageError::UnsupportedFormat(format!("{other:?}"))),
    }
}

/// Width and height from the header, checked against the limits; see [`super::declared_pixels`].
pub(super) fn declared_size(bytes: &[u8], limits: &ImageLimits) -> Result<(u32, u32), ImageError> {
    limits.check_bytes(bytes.len())?;
    let format = image::guess_format(bytes).map_err(|_| ImageError::NotAnImage)?;
    let (width, height) = match format {
        ImageFormat::Jpeg => jpeg::declared_size(bytes)?,
        // The `image` crate reads a PNG's chunks up to the pixel data, inflating an ICC profile
        // on the way; IHDR, the first chunk, is all that is needed.
        ImageFormat::Png => match bytes.get(12..24) {
            Some(ihdr) if &ihdr[..4] == b"IHDR" => (
                u32::from_be_bytes([ihdr[4], ihdr[5], ihdr[6], ihdr[7]]),
                u32::from_be_bytes([ihdr[8], ihdr[9], ihdr[10], ihdr[11]]),
            ),
            _ => return Err(ImageError::Corrupt("PNG does not start with IHDR".into())),
        },
        ImageFormat::Gif | ImageFormat::WebP | ImageFormat::Bmp | ImageFormat::Tiff => {
            catch_decoder_panic(|| {
                let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
                reader.limits(limits.to_image_limits(format));
                reader.into_dimensions().map_err(from_image_error)
            })?
        }
        other => return Err(ImageError::UnsupportedFormat(format!("{other:?}"))),
    };
    limits.check_dimensions(width, height)?;
    Ok((width, height))
}

/// Runs a decoder of the `image` crate, turning a panic inside it (a bug that hostile input can
/// reach) into a corrupt-image error: the image will never decode, and the server goes on.
fn catch_decoder_panic<T>(decode: impl FnOnce() -> Result<T, ImageError>) -> Result<T, ImageError> {
    catch_unwind(AssertUnwindSafe(decode)).unwrap_or_else(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(ImageError::Corrupt(format!("decoder failed: {msg}")))
    })
}

fn decode_other(
    bytes: &[u8],
    format: ImageFormat,
    limits: &ImageLimits,
    convention: Convention,
    transparency: Transparency,
) -> Result<RgbImage, ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits.to_image_limits(format));
    let mut decoder = reader.into_decoder().map_err(from_image_error)?;
    let (width, height) = decoder.dimensions();
    limits.check_dimensions(width, height)?;
    // `into_decoder` skips the `max_alloc` reservation that `decode()` makes, and allocating
    // a hostile header's buffer aborts the process, so reserve it here.
    if decoder.total_bytes() > limits.max_decoded_bytes() {
        return Err(ImageError::MemoryLimit(format!(
            "{width}x{height} pixels of {:?} need {} bytes",
            decoder.color_type(),
            decoder.total_bytes()
        )));
    }
    let orientation = match convention {
        Convention::Pipeline => find_orientation(&mut decoder)?,
        Convention::Processor => Orientation::NoTransforms,
    };
    // Without compositing, what is left is `convert("RGB")`: the pipeline convention's rule
    // before transformers' `convert_to_rgb`.
    let seen_as = match transparency {
        Transparency::Composite => convention,
        Transparency::Drop => Convention::Pipeline,
    };
    let rule = match format {
        ImageFormat::Png => Rule::png(bytes, seen_as),
        ImageFormat::Gif => Rule::gif(bytes, seen_as),
        ImageFormat::Tiff => Rule::tiff(bytes, seen_as),
        _ => Rule::alpha_channel(seen_as),
    };
    let rule = match transparency {
        Transparency::Composite => rule,
        Transparency::Drop => rule.without_compositing(),
    };
    let img = rule.apply(DynamicImage::from_decoder(decoder).map_err(from_image_error)?)?;
    Ok(orientation::apply(img, orientation))
}

/// EXIF orientation (for TIFF, the Orientation tag of the image itself), else XMP's, as
/// Pillow's `getexif()` does.
fn find_orientation(decoder: &mut impl ImageDecoder) -> Result<Orientation, ImageError> {
    let exif = decoder.exif_metadata().map_err(from_image_error)?;
    if let Some(found) = exif.as_deref().and_then(Orientation::from_exif_chunk) {
        return Ok(found);
    }
    let found = decoder.orientation().map_err(from_image_error)?;
    if found != Orientation::NoTransforms {
        return Ok(found);
    }
    let xmp = decoder.xmp_metadata().map_err(from_image_error)?;
    Ok(xmp
        .as_deref()
        .and_then(orientation::from_xmp)
        .unwrap_or(Orientation::NoTransforms))
}

fn from_image_error(e: image::ImageError) -> ImageError {
    use image::error::ImageError as E;
    match e {
        E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            ImageError::Truncated("the data ends before the last row".to_owned())
        }
        E::Limits(l) => ImageError::MemoryLimit(l.to_string()),
        E::Unsupported(u) => ImageError::UnsupportedFormat(u.to_string()),
        other => ImageError::Corrupt(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No input that panics the `image` crate's decoders is known here; the guard itself is
    /// tested with a decoder that panics.
    #[test]
    fn a_panicking_decoder_is_a_corrupt_image() {
        let err = catch_decoder_panic::<()>(|| panic!("index out of bounds")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image is corrupt: decoder failed: index out of bounds"
        );
        assert!(!crate::error::Error::from(err).is_limit());
    }
}
