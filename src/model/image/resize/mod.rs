//! The two 8-bit resamplers transformers' SigLIP image processors use, ported so that every
//! output pixel is the reference's: Pillow 13's (`SiglipImageProcessorPil`, [`pillow`]) and
//! torch's antialiased uint8 `interpolate` (`SiglipImageProcessor`, the torchvision backend,
//! [`torch`]). Both filters are here: bicubic for SigLIP, bilinear for SigLIP 2's
//! fixed-resolution checkpoints.
//!
//! Hand-written rather than taken from a resizing crate because the reference pixels come out
//! of exactly this code: generic resamplers (the `image` crate's CatmullRom,
//! `fast_image_resize`) differ from Pillow by up to 17 LSB on edges, through a different
//! support when shrinking, floating-point instead of fixed-point weights, no rounding to 8 bits
//! between the passes, or another pass order. The two references share the shape of the work
//! and differ in its numbers:
//! - both: Keys' cubic with a = −0.5 (support 2) or the triangle (support 1), widened by the
//!   scale when shrinking (antialiasing), centres at `(i + 0.5)·scale`, window ends rounded the
//!   way C truncates, weights normalised in `f64` and rounded to fixed point away from zero;
//!   each pass accumulates integers from one half, shifts, and clips to `u8`, so the second
//!   pass reads 8-bit pixels;
//! - Pillow: 22 fractional bits; the vertical pass first when the height shrinks by more than
//!   twice as many pixels as the width (Pillow 13; Pillow ≤ 12 always went horizontal first);
//! - torch: as many fractional bits as the largest weight leaves room for in an `i16` (at most
//!   22), per pass; always horizontal first; the cubic's outer lobe written as torch writes it.

mod pillow;
mod torch;

use image::RgbImage;
use serde::Deserialize;

use super::ImageProcessor;

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
    /// Pillow's `filter->support`, torch's `interp_size / 2`.
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// The filter at `x` (Pillow's `bilinear_filter` and `bicubic_filter`, torch's `aa_filter`s),
    /// which both references write alike except the cubic's outer lobe, `1 ≤ |x| < 2`: `outer`.
    fn weight(self, x: f64, outer: fn(f64) -> f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear if x < 1.0 => 1.0 - x,
            Filter::Bicubic if x < 1.0 => ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0,
            Filter::Bicubic if x < 2.0 => outer(x),
            Filter::Bilinear | Filter::Bicubic => 0.0,
        }
    }
}

/// Keys' cubic parameter, in both references.
const A: f64 = -0.5;

/// Fixed-point weights of one pass: output `i` reads `len[i]` input samples from `start[i]`
/// with weights `k[i * ksize..][..len[i]]`, which have `precision` fractional bits.
struct Weights {
    start: Vec<usize>,
    len: Vec<usize>,
    ksize: usize,
    k: Vec<i32>,
    precision: u32,
}

/// The fixed-point weights of one pass from `in_size` to `out_size` samples: windows and
/// normalised `f64` weights as both references compute them (Pillow's `precompute_coeffs`,
/// torch's `_compute_indices_weights_aa`), the cubic's outer lobe by `outer`, then rounded with
/// the fractional bits `precision` gives for the largest weight.
fn weights(
    in_size: u32,
    out_size: u32,
    filter: Filter,
    outer: fn(f64) -> f64,
    precision: impl FnOnce(f64) -> u32,
) -> Weights {
    // Pillow computes the scale from its float box (0, in_size), torch from the integer size:
    // the same for any side under 2²⁴.
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let out = out_size as usize;
    let mut start = Vec::with_capacity(out);
    let mut len = Vec::with_capacity(out);
    let mut rows = Vec::with_capacity(out);
    for i in 0..out {
        let center = (i as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's `(int)` truncates toward zero; both ends are then clamped to the image.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size)) as usize;
        let mut row: Vec<f64> = (xmin..xmax)
            .map(|x| filter.weight((x as f64 - center + 0.5) * ss, outer))
            .collect();
        let total: f64 = row.iter().sum();
        if total != 0.0 {
            for r in &mut row {
                *r /= total;
            }
        }
        start.push(xmin);
        len.push(row.len());
        rows.push(row);
    }
    let largest = rows.iter().flatten().copied().fold(f64::MIN, f64::max);
    let precision = precision(largest);
    let mut k = vec![0; out * ksize];
    for (i, row) in rows.iter().enumerate() {
        for (k, &w) in k[i * ksize..].iter_mut().zip(row) {
            *k = to_fixed(w, precision);
        }
    }
    Weights {
        start,
        len,
        ksize,
        k,
        precision,
    }
}

/// `w · 2^bits` rounded half away from zero, as both references round (C's truncating `(int)`
/// of `w · 2^bits ± 0.5`).
fn to_fixed(w: f64, bits: u32) -> i32 {
    let fixed = w * f64::from(1u32 << bits);
    if w < 0.0 {
        (fixed - 0.5) as i32
    } else {
        (fixed + 0.5) as i32
    }
}

/// Pillow's `clip8` (torch's shift and saturating packs): drops the fractional bits and
/// saturates.
#[inline(always)]
fn clip8(acc: i32, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

/// Rows resized along x together (see `horizontal`).
const ROW_BLOCK: usize = 8;

/// Resizes along x: `src` is `height` rows of `src_w` RGB pixels.
///
/// Pillow walks each row pixel by pixel, an inner loop over three channels that does not
/// vectorise. Here a block of rows is first interleaved column by column, so that an output
/// column of the whole block is a sum of contiguous 24-byte columns, as in `vertical`, which
/// the compiler vectorises. Every output sample is the same sum of the same integer products
/// as Pillow's.
#[inline(always)]
fn horizontal(src: &[u8], src_w: usize, height: usize, w: &Weights) -> Vec<u8> {
    const LANE: usize = ROW_BLOCK * 3;
    let out_w = w.start.len();
    let (half, bits) = (1 << (w.precision - 1), w.precision);
    let mut dst = vec![0u8; out_w * height * 3];
    // Column x holds pixel x of each row of the block (a short last block leaves lanes unused).
    let mut columns = vec![[0u8; LANE]; src_w];
    for (src_rows, dst_rows) in src
        .chunks(src_w * 3 * ROW_BLOCK)
        .zip(dst.chunks_mut(out_w * 3 * ROW_BLOCK))
    {
        for (r, row) in src_rows.chunks_exact(src_w * 3).enumerate() {
            for (column, px) in columns.iter_mut().zip(row.chunks_exact(3)) {
                column[r * 3..][..3].copy_from_slice(px);
            }
        }
        for i in 0..out_w {
            let k = &w.k[i * w.ksize..][..w.len[i]];
            let mut acc = [half; LANE];
            for (&k, column) in k.iter().zip(&columns[w.start[i]..]) {
                for (a, &p) in acc.iter_mut().zip(column) {
                    *a += i32::from(p) * k;
                }
            }
            for (dst_row, px) in dst_rows
                .chunks_exact_mut(out_w * 3)
                .zip(acc.chunks_exact(3))
            {
                dst_row[i * 3..][..3].copy_from_slice(&[
                    clip8(px[0], bits),
                    clip8(px[1], bits),
                    clip8(px[2], bits),
                ]);
            }
        }
    }
    dst
}

/// Resizes along y: `src` is rows of `width` RGB pixels.
#[inline(always)]
fn vertical(src: &[u8], width: usize, w: &Weights) -> Vec<u8> {
    let stride = width * 3;
    let out_h = w.start.len();
    let half = 1 << (w.precision - 1);
    let mut dst = vec![0u8; stride * out_h];
    let mut acc = vec![0i32; stride];
    for (i, dst_row) in dst.chunks_exact_mut(stride).enumerate() {
        acc.fill(half);
        let k = &w.k[i * w.ksize..][..w.len[i]];
        let rows = src[w.start[i] * stride..].chunks_exact(stride);
        for (&k, src_row) in k.iter().zip(rows) {
            for (a, &p) in acc.iter_mut().zip(src_row) {
                *a += i32::from(p) * k;
            }
        }
        for (d, &a) in dst_row.iter_mut().zip(&acc) {
            *d = clip8(a, w.precision);
        }
    }
    dst
}

/// `img` resized to `width` × `height` by the resampler of `processor`: Pillow 13's
/// `img.resize((width, height), filter)`, or torch's
/// `interpolate(uint8, (height, width), mode, antialias=True)`, for RGB8.
pub(super) fn resize(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    processor: ImageProcessor,
) -> RgbImage {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { resize_avx2(img, width, height, filter, processor) };
    }
    resize_any_cpu(img, width, height, filter, processor)
}

/// [`resize_any_cpu`] compiled for AVX2, whose 8-lane 32-bit multiply the passes' inner loops
/// vectorise to (the baseline x86-64 target has SSE2 only, without one): 2–3× faster. The same
/// integer operations, so the same pixels.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resize_avx2(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    processor: ImageProcessor,
) -> RgbImage {
    resize_any_cpu(img, width, height, filter, processor)
}

#[inline(always)]
fn resize_any_cpu(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    processor: ImageProcessor,
) -> RgbImage {
    let (in_w, in_h) = img.dimensions();
    let need_h = width != in_w;
    let need_v = height != in_h;
    let src = img.as_raw();
    let (w, h) = (width as usize, height as usize);
    let (along_x, along_y, vertical_first): (Weights, Weights, bool) = match processor {
        ImageProcessor::Pil => (
            pillow::weights(in_w, width, filter),
            pillow::weights(in_h, height, filter),
            pillow::vertical_first(in_w, in_h, width, height),
        ),
        ImageProcessor::Torchvision => (
            torch::weights(in_w, width, filter),
            torch::weights(in_h, height, filter),
            false,
        ),
    };
    let pixels = match (need_h, need_v) {
        (false, false) => src.clone(),
        (true, false) => horizontal(src, in_w as usize, h, &along_x),
        (false, true) => vertical(src, w, &along_y),
        (true, true) if vertical_first => {
            let tmp = vertical(src, in_w as usize, &along_y);
            horizontal(&tmp, in_w as usize, h, &along_x)
        }
        (true, true) => {
            let tmp = horizontal(src, in_w as usize, in_h as usize, &along_x);
            vertical(&tmp, w, &along_y)
        }
    };
    RgbImage::from_raw(width, height, pixels).expect("resampler output has the requested size")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILTERS: [Filter; 2] = [Filter::Bilinear, Filter::Bicubic];
    const PROCESSORS: [ImageProcessor; 2] = [ImageProcessor::Pil, ImageProcessor::Torchvision];

    fn weights_of(processor: ImageProcessor, i: u32, o: u32, filter: Filter) -> Weights {
        match processor {
            ImageProcessor::Pil => pillow::weights(i, o, filter),
            ImageProcessor::Torchvision => torch::weights(i, o, filter),
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (processor, filter) in PROCESSORS.into_iter().flat_map(|p| FILTERS.map(|f| (p, f))) {
            for (i, o) in [(512, 224), (37, 224), (4000, 384), (1, 224), (224, 1)] {
                let w = weights_of(processor, i, o, filter);
                for (j, &n) in w.len.iter().enumerate() {
                    let sum: i32 = w.k[j * w.ksize..][..n].iter().sum();
                    assert!(
                        (sum - (1 << w.precision)).abs() <= n as i32,
                        "{processor:?} {filter:?} {i}->{o} #{j}"
                    );
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 500, image::Rgb([10, 128, 250]));
        for (processor, filter) in PROCESSORS.into_iter().flat_map(|p| FILTERS.map(|f| (p, f))) {
            let out = resize(&img, 224, 224, filter, processor);
            assert!(
                out.pixels().all(|p| p.0 == [10, 128, 250]),
                "{processor:?} {filter:?}"
            );
        }
    }

    /// The horizontal pass as Pillow writes it (`ImagingResampleHorizontal_8bpc`; torch's
    /// portable kernel is the same loop): pixel by pixel, channel by channel. The reference for
    /// the interleaved `horizontal`.
    fn pillow_horizontal(src: &[u8], src_w: usize, w: &Weights) -> Vec<u8> {
        let out_w = w.start.len();
        let mut dst = Vec::new();
        for row in src.chunks_exact(src_w * 3) {
            for i in 0..out_w {
                let k = &w.k[i * w.ksize..][..w.len[i]];
                for c in 0..3 {
                    let mut acc = 1 << (w.precision - 1);
                    for (t, &k) in k.iter().enumerate() {
                        acc += i32::from(row[(w.start[i] + t) * 3 + c]) * k;
                    }
                    dst.push(clip8(acc, w.precision));
                }
            }
        }
        dst
    }

    #[test]
    fn interleaved_rows_give_pillows_horizontal_pass() {
        // Heights around the row block, one column, one row, growing and shrinking.
        for (w, h, out_w) in [
            (640, 427, 384),
            (1, 9, 224),
            (513, 1, 7),
            (37, 15, 224),
            (9, 8, 2),
        ] {
            let img = RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 7 + y * 3) as u8, (x ^ y) as u8, (x * y / 3 + 11) as u8])
            });
            for (processor, filter) in PROCESSORS.into_iter().flat_map(|p| FILTERS.map(|f| (p, f)))
            {
                let weights = weights_of(processor, w, out_w, filter);
                assert_eq!(
                    horizontal(img.as_raw(), w as usize, h as usize, &weights),
                    pillow_horizontal(img.as_raw(), w as usize, &weights),
                    "{w}x{h} -> {out_w} {processor:?} {filter:?}"
                );
            }
        }
    }

    /// Where the CPU lacks AVX2 (or is not x86-64) there is one path only: `resize` is
    /// `resize_any_cpu`, and the test says so and compares nothing.
    #[test]
    fn every_cpu_path_gives_the_same_pixels() {
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        if !avx2 {
            // Straight to stderr: the test harness would hide an `eprintln!` of a passing test.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "every_cpu_path_gives_the_same_pixels: not compared: this CPU has no AVX2, so \
                 the AVX2 resizer cannot run here and `resize` is the portable one"
            );
            return;
        }
        // `resize` takes the AVX2 path (the parity suite checks that path against Pillow); the
        // portable one must agree. Heights that are not a multiple of the row block, growing
        // and shrinking, both pass orders.
        let img = |w: u32, h: u32| {
            RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 7 + y * 3) as u8, (x ^ y) as u8, (x * y / 3 + 11) as u8])
            })
        };
        for (w, h, out_w, out_h) in [
            (640, 427, 384, 384),
            (37, 500, 224, 224),
            (513, 13, 224, 224),
            (3, 2, 7, 5),
            (2000, 1500, 224, 224),
        ] {
            let src = img(w, h);
            for (processor, filter) in PROCESSORS.into_iter().flat_map(|p| FILTERS.map(|f| (p, f)))
            {
                assert_eq!(
                    resize(&src, out_w, out_h, filter, processor),
                    resize_any_cpu(&src, out_w, out_h, filter, processor),
                    "{w}x{h} -> {out_w}x{out_h} {processor:?} {filter:?}"
                );
            }
        }
    }

    #[test]
    fn bilinear_reads_two_neighbours_when_enlarging_and_bicubic_four() {
        // Enlarging, the filter is not widened: a window of 2 × support samples.
        assert_eq!(pillow::weights(100, 224, Filter::Bilinear).ksize, 3);
        assert_eq!(pillow::weights(100, 224, Filter::Bicubic).ksize, 5);
        assert!(pillow::weights(100, 224, Filter::Bilinear)
            .len
            .iter()
            .all(|&n| n <= 3));
    }
}
