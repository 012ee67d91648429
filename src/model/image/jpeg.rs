//! JPEG decoding with libjpeg-turbo's decoder (via the `mozjpeg` crate), the same decoder
//! family Pillow uses.
//!
//! JPEG decoding is not bit-exact across implementations: the `image` crate's pure-Rust
//! decoder differs from libjpeg-turbo by up to 12 LSB (IDCT and chroma upsampling), while
//! libjpeg's defaults (integer slow IDCT, fancy upsampling) — which Pillow keeps — reproduce
//! Pillow's pixels exactly.

use std::cell::Cell;
use std::io::{BufRead, Read};
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::RgbImage;
use mozjpeg::{ColorSpace, Decompress, Marker};

use super::{jpeg_markers, orientation, rgb, Convention, ImageError, ImageLimits};

/// Decodes a JPEG to RGB8, upright under the pipeline convention.
///
/// libjpeg reports fatal errors through a callback that the `mozjpeg` crate turns into an
/// unwinding panic, so the whole decode runs under `catch_unwind`; it never aborts the process
/// (the server must not build with `panic = "abort"`).
pub(super) fn decode(
    bytes: &[u8],
    limits: &ImageLimits,
    convention: Convention,
) -> Result<RgbImage, ImageError> {
    if jpeg_markers::walk(bytes, limits.max_jpeg_scans).scans > limits.max_jpeg_scans {
        return Err(ImageError::TooManyScans {
            max: limits.max_jpeg_scans,
        });
    }
    let ran_out = Cell::new(false);
    let result = catch_unwind(AssertUnwindSafe(|| {
        decode_inner(bytes, limits, convention, &ran_out)
    }));
    let truncated =
        || ImageError::Truncated("JPEG data ends before the end-of-image marker".to_owned());
    match result {
        Ok(Ok(_)) | Ok(Err(ImageError::Corrupt(_))) | Err(_) if ran_out.get() => Err(truncated()),
        Ok(result) => result,
        Err(payload) => Err(ImageError::Corrupt(panic_message(&*payload))),
    }
}

/// Width and height from the frame header, without decoding.
pub(super) fn declared_size(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    jpeg_markers::walk(bytes, 0).frame.ok_or_else(|| {
        ImageError::Corrupt("JPEG has no frame header before its first scan".to_owned())
    })
}

fn decode_inner(
    bytes: &[u8],
    limits: &ImageLimits,
    convention: Convention,
    ran_out: &Cell<bool>,
) -> Result<RgbImage, ImageError> {
    let reader = WatchedReader {
        rest: bytes,
        ran_out,
    };
    // EXIF and XMP live in APP1; only the pipeline convention reads them.
    let markers: &[Marker] = match convention {
        Convention::Pipeline => &[Marker::APP(1)],
        Convention::Processor => &[],
    };
    let dec = Decompress::builder()
        .with_markers(markers)
        .from_reader(reader)
        .map_err(|e| ImageError::Corrupt(e.to_string()))?;
    let (width, height) = (dec.width() as u32, dec.height() as u32);
    limits.check_dimensions(width, height)?;
    let orientation = match convention {
        Convention::Pipeline => find_orientation(&dec),
        Convention::Processor => Orientation::NoTransforms,
    };

    let pixels = (width as usize) * (height as usize);
    let mut out = Vec::new();
    out.try_reserve_exact(pixels * 3)
        .map_err(|e| ImageError::OutOfMemory(e.to_string()))?;
    match dec.color_space() {
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
            let mut started = dec.to_colorspace(ColorSpace::JCS_CMYK).map_err(io_err)?;
            let cmyk: Vec<u8> = started.read_scanlines().map_err(io_err)?;
            started.finish().map_err(io_err)?;
            rgb::inverted_cmyk_to_rgb(&cmyk, &mut out);
        }
        ColorSpace::JCS_GRAYSCALE => {
            let mut started = dec.grayscale().map_err(io_err)?;
            let gray: Vec<u8> = started.read_scanlines().map_err(io_err)?;
            started.finish().map_err(io_err)?;
            out.extend(gray.iter().flat_map(|&v| [v; 3]));
        }
        _ => {
            let mut started = dec.rgb().map_err(io_err)?;
            out.resize(pixels * 3, 0);
            started.read_scanlines_into(&mut out).map_err(io_err)?;
            started.finish().map_err(io_err)?;
        }
    }
    if out.len() != pixels * 3 {
        return Err(ImageError::Corrupt(
            "JPEG decoder returned too few rows".to_owned(),
        ));
    }
    let img = RgbImage::from_raw(width, height, out).expect("buffer length checked above");
    Ok(orientation::apply(img, orientation))
}

/// Pillow takes the first `Exif` APP1 segment, and XMP only if EXIF has no orientation tag.
fn find_orientation<R>(dec: &Decompress<R>) -> Orientation {
    const EXIF: &[u8] = b"Exif\0\0";
    const XMP: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";
    let app1 = || dec.markers().filter(|m| m.marker == Marker::APP(1));
    let exif = app1().find_map(|m| m.data.strip_prefix(EXIF));
    if let Some(found) = exif.and_then(Orientation::from_exif_chunk) {
        return found;
    }
    app1()
        .find_map(|m| m.data.strip_prefix(XMP))
        .and_then(orientation::from_xmp)
        .unwrap_or(Orientation::NoTransforms)
}

fn io_err(e: std::io::Error) -> ImageError {
    ImageError::Corrupt(format!("JPEG decoding stopped: {e}"))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("libjpeg failed");
    msg.trim_start_matches("libjpeg fatal error: ").to_owned()
}

/// A byte-slice reader that records whether libjpeg asked for data past the end.
///
/// At end of input libjpeg only warns ("Premature end of JPEG file") and decodes grey, where
/// Pillow raises "image file is truncated"; the `mozjpeg` crate reports that moment only as a
/// silenced warning, so the reader watches for it instead.
struct WatchedReader<'a> {
    rest: &'a [u8],
    ran_out: &'a Cell<bool>,
}

impl Read for WatchedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.fill_buf()?.len().min(buf.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for WatchedReader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.rest.is_empty() {
            self.ran_out.set(true);
        }
        Ok(self.rest)
    }

    fn consume(&mut self, amt: usize) {
        self.rest = &self.rest[amt..];
    }
}
