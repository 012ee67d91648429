//! A port of Pillow 13's convolution resampler (`src/libImaging/Resample.c`, `ImagingResample`
//! for 8-bit RGB with the default box), with its bicubic and bilinear filters: SigLIP's
//! processors use bicubic, SigLIP 2's fixed-resolution ones bilinear.
//!
//! Hand-written rather than taken from a resizing crate because the reference pixels come out
//! of exactly this code: generic resamplers (the `image` crate's CatmullRom,
//! `fast_image_resize`) differ from Pillow by up to 17 LSB on edges, through a different
//! support when shrinking, floating-point instead of 22-bit fixed-point weights, no rounding
//! to 8 bits between the passes, or another pass order. This port matches Pillow bit for bit.
//!
//! What it reproduces:
//! - the filters: Keys' cubic with a = −0.5 (support 2) and the triangle (support 1), widened
//!   by the scale when shrinking (antialiasing), centres at `(i + 0.5)·scale`, window ends
//!   rounded the way C truncates;
//! - weights normalised in `f64`, then rounded to `i32` with 22 fractional bits;
//! - each pass accumulates in `i32` from 0.5, shifts, and clips to `u8`;
//! - the pass order: horizontal then vertical, except that Pillow 13 runs the vertical pass
//!   first when the height shrinks and by more than twice as many pixels as the width does
//!   (Pillow ≤ 12 always went horizontal first).

use image::RgbImage;
use serde::Deserialize;

/// Fractional bits of the fixed-point weights: 32 − 8 (result) − 2 (overflow headroom).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// A resampling filter, by the name `preprocessor_config.json`'s `resample` has in the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    /// `PIL.Image.Resampling.BILINEAR` (2).
    Bilinear,
    /// `PIL.Image.Resampling.BICUBIC` (3).
    Bicubic,
}

impl Filter {
    /// Pillow's `filter->support`.
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// Pillow's `bilinear_filter` and `bicubic_filter`.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear if x < 1.0 => 1.0 - x,
            Filter::Bilinear => 0.0,
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fixed-point weights of one pass: output `i` reads `len[i]` input samples from `start[i]`
/// with weights `k[i * ksize..][..len[i]]`.
struct Weights {
    start: Vec<usize>,
    len: Vec<usize>,
    ksize: usize,
    k: Vec<i32>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`.
fn weights(in_size: u32, out_size: u32, filter: Filter) -> Weights {
    // Pillow computes the scale from the float box (0, in_size).
    let scale = f64::from(in_size as f32) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let out = out_size as usize;
    let mut w = Weights {
        start: Vec::with_capacity(out),
        len: Vec::with_capacity(out),
        ksize,
        k: vec![0; out * ksize],
    };
    let mut row = vec![0f64; ksize];
    for i in 0..out {
        let center = (i as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero; both ends are then clamped to the image.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
        let n = xmax - xmin;
        let mut total = 0.0;
        for (x, r) in row[..n].iter_mut().enumerate() {
            *r = filter.weight(((x + xmin) as f64 - center + 0.5) * ss);
            total += *r;
        }
        for (r, k) in row[..n].iter().zip(&mut w.k[i * ksize..]) {
            let r = if total != 0.0 { r / total } else { *r };
            let fixed = r * f64::from(1u32 << PRECISION_BITS);
            *k = if r < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        w.start.push(xmin);
        w.len.push(n);
    }
    w
}

/// Pillow's `clip8`: drops the fractional bits and saturates.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The rounding offset every accumulator starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Resizes along x: `src` is `height` rows of `src_w` RGB pixels.
fn horizontal(src: &[u8], src_w: usize, height: usize, w: &Weights) -> Vec<u8> {
    let out_w = w.start.len();
    let mut dst = vec![0u8; out_w * height * 3];
    for (src_row, dst_row) in src
        .chunks_exact(src_w * 3)
        .zip(dst.chunks_exact_mut(out_w * 3))
    {
        for (i, out) in dst_row.chunks_exact_mut(3).enumerate() {
            let k = &w.k[i * w.ksize..][..w.len[i]];
            let px = &src_row[w.start[i] * 3..][..k.len() * 3];
            let mut acc = [HALF; 3];
            for (&k, p) in k.iter().zip(px.chunks_exact(3)) {
                acc[0] += i32::from(p[0]) * k;
                acc[1] += i32::from(p[1]) * k;
                acc[2] += i32::from(p[2]) * k;
            }
            out.copy_from_slice(&acc.map(clip8));
        }
    }
    dst
}

/// Resizes along y: `src` is rows of `width` RGB pixels.
fn vertical(src: &[u8], width: usize, w: &Weights) -> Vec<u8> {
    let stride = width * 3;
    let out_h = w.start.len();
    let mut dst = vec![0u8; stride * out_h];
    let mut acc = vec![0i32; stride];
    for (i, dst_row) in dst.chunks_exact_mut(stride).enumerate() {
        acc.fill(HALF);
        let k = &w.k[i * w.ksize..][..w.len[i]];
        let rows = src[w.start[i] * stride..].chunks_exact(stride);
        for (&k, src_row) in k.iter().zip(rows) {
            for (a, &p) in acc.iter_mut().zip(src_row) {
                *a += i32::from(p) * k;
            }
        }
        for (d, &a) in dst_row.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    dst
}

/// `img.resize((width, height), filter)` in Pillow 13, for RGB8.
pub(super) fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    let need_h = width != in_w;
    let need_v = height != in_h;
    let src = img.as_raw();
    let (w, h) = (width as usize, height as usize);
    let vertical_first = height < in_h
        && i64::from(in_h) - i64::from(height) > 2 * (i64::from(in_w) - i64::from(width));
    let along_x = || weights(in_w, width, filter);
    let along_y = || weights(in_h, height, filter);
    let pixels = match (need_h, need_v) {
        (false, false) => src.clone(),
        (true, false) => horizontal(src, in_w as usize, h, &along_x()),
        (false, true) => vertical(src, w, &along_y()),
        (true, true) if vertical_first => {
            let tmp = vertical(src, in_w as usize, &along_y());
            horizontal(&tmp, in_w as usize, h, &along_x())
        }
        (true, true) => {
            let tmp = horizontal(src, in_w as usize, in_h as usize, &along_x());
            vertical(&tmp, w, &along_y())
        }
    };
    RgbImage::from_raw(width, height, pixels).expect("resampler output has the requested size")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILTERS: [Filter; 2] = [Filter::Bilinear, Filter::Bicubic];

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for filter in FILTERS {
            for (i, o) in [(512, 224), (37, 224), (4000, 384), (1, 224), (224, 1)] {
                let w = weights(i, o, filter);
                for (j, &n) in w.len.iter().enumerate() {
                    let sum: i32 = w.k[j * w.ksize..][..n].iter().sum();
                    assert!(
                        (sum - (1 << PRECISION_BITS)).abs() <= n as i32,
                        "{filter:?} {i}->{o} #{j}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 500, image::Rgb([10, 128, 250]));
        for filter in FILTERS {
            let out = resize(&img, 224, 224, filter);
            assert!(out.pixels().all(|p| p.0 == [10, 128, 250]), "{filter:?}");
        }
    }

    #[test]
    fn bilinear_reads_two_neighbours_when_enlarging_and_bicubic_four() {
        // Enlarging, the filter is not widened: a window of 2 × support samples.
        assert_eq!(weights(100, 224, Filter::Bilinear).ksize, 3);
        assert_eq!(weights(100, 224, Filter::Bicubic).ksize, 5);
        assert!(weights(100, 224, Filter::Bilinear)
            .len
            .iter()
            .all(|&n| n <= 3));
    }
}
