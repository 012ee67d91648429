//! Pillow's conversions to RGB: `convert("RGB")`, and `alpha_composite` onto white followed by
//! `convert("RGB")` (transformers' `convert_to_rgb` for images with transparency).
//!
//! The rules per source mode, all checked against Pillow 13:
//! - L → replicated; LA, RGBA → alpha dropped by `convert("RGB")`;
//! - 16-bit gray (`I;16`) → `min(v, 255)` (Pillow clips, it does not scale);
//! - 16-bit RGB, RGBA, LA → high byte, alpha too (Pillow unpacks them with the `;16B` raw modes);
//! - CMYK → Pillow's `cmyk2rgb` (see [`inverted_cmyk_to_rgb`]).

use image::{DynamicImage, ImageBuffer, Pixel, RgbImage};

use super::{Convention, ImageError, ImageProcessor};

/// Converts any decoded image to RGB8 by Pillow's rules.
pub(super) fn to_rgb(img: DynamicImage) -> Result<RgbImage, ImageError> {
    Ok(match img {
        DynamicImage::ImageRgb8(img) => img,
        DynamicImage::ImageRgba8(img) => map(&img, |p| [p[0], p[1], p[2]]),
        DynamicImage::ImageLuma8(img) => map(&img, |p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(img) => map(&img, |p| [p[0]; 3]),
        DynamicImage::ImageLuma16(img) => map(&img, |p| [clip16(p[0]); 3]),
        DynamicImage::ImageLumaA16(img) => map(&img, |p| [high(p[0]); 3]),
        DynamicImage::ImageRgb16(img) => map(&img, |p| [high(p[0]), high(p[1]), high(p[2])]),
        DynamicImage::ImageRgba16(img) => map(&img, |p| [high(p[0]), high(p[1]), high(p[2])]),
        other => {
            return Err(ImageError::UnsupportedFormat(format!(
                "{:?} pixels",
                other.color()
            )))
        }
    })
}

/// An image with an alpha channel composited onto white, as `convert("RGBA")`,
/// `Image.alpha_composite(white, image)` and `convert("RGB")` give it; other images as
/// [`to_rgb`] converts them.
pub(super) fn composite_on_white(img: DynamicImage) -> Result<RgbImage, ImageError> {
    let over = |c: u8, a: u8| [over_white(c, a); 3];
    Ok(match img {
        DynamicImage::ImageRgba8(img) => map(&img, |p| {
            [
                over_white(p[0], p[3]),
                over_white(p[1], p[3]),
                over_white(p[2], p[3]),
            ]
        }),
        DynamicImage::ImageLumaA8(img) => map(&img, |p| over(p[0], p[1])),
        DynamicImage::ImageRgba16(img) => map(&img, |p| {
            let a = high(p[3]);
            [
                over_white(high(p[0]), a),
                over_white(high(p[1]), a),
                over_white(high(p[2]), a),
            ]
        }),
        DynamicImage::ImageLumaA16(img) => map(&img, |p| over(high(p[0]), high(p[1]))),
        other => return to_rgb(other),
    })
}

/// One channel of Pillow's `ImagingAlphaComposite` (7 extra bits of precision, divisions by
/// 255 rounded with shifts) with an opaque white destination.
fn over_white(c: u8, a: u8) -> u8 {
    const PRECISION_BITS: u32 = 7;
    const WHITE: u32 = 255;
    if a == 0 {
        return WHITE as u8;
    }
    let (c, a) = (u32::from(c), u32::from(a));
    let blend = WHITE * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = c * coef1 + WHITE * coef2 + (0x80 << PRECISION_BITS);
    ((((tmp >> 8) + tmp) >> 8) >> PRECISION_BITS) as u8
}

/// Interleaved RGBA8 to RGB. Under the pipeline convention the alpha is dropped
/// (`convert("RGB")` of `Image.fromarray`). Under the processor convention it is composited
/// onto white as `convert_to_rgb` does for an array, which the two backends write differently:
/// - PIL backend, in `f64`: `alpha·c + (1 − alpha)·255` rounded half to even;
/// - torchvision backend, in `f32` (`tvF.to_dtype` both ways): with `k = f32(1/255)`,
///   `a = α·k`, `(c·k·a + (1 − a)) · f32(255.999)` truncated to `u8`.
pub(super) fn rgba_to_rgb(
    rgba: &[u8],
    convention: Convention,
    processor: ImageProcessor,
    rgb: &mut Vec<u8>,
) {
    let over: fn(u8, u8) -> u8 = match (convention, processor) {
        (Convention::Pipeline, _) => |c, _| c,
        (Convention::Processor, ImageProcessor::Pil) => |c, a| {
            let alpha = f64::from(a) / 255.0;
            (alpha * f64::from(c) + (1.0 - alpha) * 255.0).round_ties_even() as u8
        },
        (Convention::Processor, ImageProcessor::Torchvision) => |c, a| {
            const K: f32 = (1.0 / 255.0) as f32;
            let a = f32::from(a) * K;
            ((f32::from(c) * K * a + (1.0 - a)) * 255.999_f64 as f32) as u8
        },
    };
    rgb.extend(
        rgba.chunks_exact(4)
            .flat_map(|p| [over(p[0], p[3]), over(p[1], p[3]), over(p[2], p[3])]),
    );
}

/// A CMYK JPEG's samples to RGB as Pillow does: it reads every CMYK JPEG as Adobe-inverted
/// (raw mode `CMYK;I`, samples stored as 255 − value), then applies `cmyk2rgb`,
/// `255 − k − c·(255 − k)/255` with its integer rounding.
pub(super) fn inverted_cmyk_to_rgb(cmyk: &[u8], rgb: &mut Vec<u8>) {
    for p in cmyk.chunks_exact(4) {
        let nk = 255 - i32::from(255 - p[3]);
        for &c in &p[..3] {
            rgb.push((nk - muldiv255(i32::from(255 - c), nk)).clamp(0, 255) as u8);
        }
    }
}

/// Pillow's `MULDIV255`: a·b/255 rounded, without a division.
fn muldiv255(a: i32, b: i32) -> i32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

fn clip16(v: u16) -> u8 {
    v.min(255) as u8
}

fn high(v: u16) -> u8 {
    (v >> 8) as u8
}

fn map<P: Pixel>(img: &ImageBuffer<P, Vec<P::Subpixel>>, f: impl Fn(&P) -> [u8; 3]) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        image::Rgb(f(img.get_pixel(x, y)))
    })
}
