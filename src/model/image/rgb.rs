//! Pillow's `convert("RGB")`, which is what the reference applies.
//!
//! transformers' `load_image` ends with `image.convert("RGB")` before the processor sees the
//! image, so the processor's white-background compositing sees no alpha channel: alpha is
//! simply dropped, keeping the colour stored under transparent pixels (colour-keyed
//! transparency is the exception, see `color_key`). The rules per source mode, all checked against Pillow 13:
//! - L → replicated; LA, RGBA → alpha dropped;
//! - 16-bit gray (`I;16`) → `min(v, 255)` (Pillow clips, it does not scale);
//! - 16-bit RGB, RGBA, LA → high byte (Pillow unpacks them with the `;16B` raw modes);
//! - CMYK → Pillow's `cmyk2rgb` (see [`cmyk_to_rgb`]).

use image::{DynamicImage, ImageBuffer, Pixel, RgbImage};

use super::ImageError;

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

/// Drops the alpha of interleaved RGBA8, the rule `to_rgb` applies to decoded RGBA.
pub(super) fn rgba_to_rgb(rgba: &[u8], rgb: &mut Vec<u8>) {
    rgb.extend(rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]));
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
