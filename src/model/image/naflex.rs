//! SigLIP 2 NaFlex input: an RGB8 image → patches on a grid of its own aspect ratio, as
//! transformers' `Siglip2ImageProcessorPil` makes them (transformers 5.24).
//!
//! The image is resized (the same Pillow-exact resampler as the square path) to the largest size
//! whose sides are multiples of the patch size and that fits the patch budget M
//! ([`target_size`]), rescaled and normalised by the same per-level tables, and cut into
//! `patch × patch` patches, each flattened row by row with its three channels innermost. The
//! model takes M patches per image: the rest are zeros, masked out (`pixel_attention_mask`), and
//! the grid (`spatial_shapes`) says how the real ones lie.

use image::RgbImage;

use super::{normalize, resize, Patches, Preprocess};

/// Where the real patches of one image lie: `rows × cols` of them, the first `rows·cols` of
/// its M.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub rows: u32,
    pub cols: u32,
}

impl Grid {
    pub fn patches(self) -> usize {
        self.rows as usize * self.cols as usize
    }
}

/// `get_image_size_for_max_num_patches` as transformers writes it: a binary search, in `f64`
/// as Python's floats are, for the largest scale at which both sides, each rounded up to a
/// multiple of `patch` (and at least one patch), give at most `max_patches` patches. Returns
/// (height, width) in pixels. The same operations in the same order give the same doubles, so
/// the same sizes, at every step.
pub fn target_size(height: u32, width: u32, patch: u32, max_patches: u32) -> (u32, u32) {
    const EPS: f64 = 1e-5;
    let patch_f = f64::from(patch);
    let scaled = |scale: f64, size: u32| -> f64 {
        let size = (f64::from(size) * scale / patch_f).ceil() * patch_f;
        size.max(patch_f)
    };
    let (mut low, mut high) = (EPS / 10.0, 100.0);
    while high - low >= EPS {
        let scale = (low + high) / 2.0;
        let patches = (scaled(scale, height) / patch_f) * (scaled(scale, width) / patch_f);
        if patches <= f64::from(max_patches) {
            low = scale;
        } else {
            high = scale;
        }
    }
    (scaled(low, height) as u32, scaled(low, width) as u32)
}

/// Writes `img` as `patches.budget` patches of `3·patches.size²` floats each into `out` (the
/// real ones first, zeros after them) and returns their grid.
///
/// # Panics
/// If `out` does not hold exactly `budget·3·size²` floats.
pub fn write_patches(img: &RgbImage, p: &Preprocess, patches: Patches, out: &mut [f32]) -> Grid {
    let Patches {
        size: patch,
        budget: max_patches,
    } = patches;
    let per_patch = 3 * (patch as usize).pow(2);
    assert_eq!(
        out.len(),
        max_patches as usize * per_patch,
        "output holds {} floats, {max_patches} patches of {patch}x{patch} need {}",
        out.len(),
        max_patches as usize * per_patch
    );
    let (height, width) = target_size(img.height(), img.width(), patch, max_patches);
    let resized;
    let img = if img.dimensions() == (width, height) {
        img
    } else {
        resized = resize::resize(img, width, height, p.filter, p.processor);
        &resized
    };
    let tables = normalize::tables(p);
    let grid = Grid {
        rows: height / patch,
        cols: width / patch,
    };
    let (real, padding) = out.split_at_mut(grid.patches() * per_patch);
    // One pass over the image in memory order: each line of pixels is cut into the lines of the
    // patches it crosses (a patch line is `patch` pixels, three floats each).
    let (patch, cols) = (patch as usize, grid.cols as usize);
    let patch_line = 3 * patch;
    for (y, line) in img.as_raw().chunks_exact(3 * width as usize).enumerate() {
        let first = (y / patch) * cols * per_patch + (y % patch) * patch_line;
        for (col, pixels) in line.chunks_exact(patch_line).enumerate() {
            let at = &mut real[first + col * per_patch..][..patch_line];
            for (value, pixel) in at.chunks_exact_mut(3).zip(pixels.chunks_exact(3)) {
                value[0] = tables[0][usize::from(pixel[0])];
                value[1] = tables[1][usize::from(pixel[1])];
                value[2] = tables[2][usize::from(pixel[2])];
            }
        }
    }
    padding.fill(0.0);
    grid
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size the search returns is a whole number of patches, at least one each way, and
    /// fits the budget.
    #[test]
    fn the_size_fits_the_budget_in_whole_patches() {
        for (height, width) in [
            (1, 1),
            (3, 500),
            (500, 3),
            (480, 640),
            (1000, 50),
            (224, 224),
        ] {
            for budget in [1, 16, 256, 576, 1024] {
                let (h, w) = target_size(height, width, 16, budget);
                assert!(h % 16 == 0 && w % 16 == 0 && h >= 16 && w >= 16);
                assert!(
                    (h / 16) * (w / 16) <= budget,
                    "{height}x{width} at {budget}: {h}x{w}"
                );
            }
        }
    }

    /// A patch is its pixels row by row, the three channels of each pixel together; patches
    /// go along the grid's rows; the rest of the budget is zeros. A 32×32 image at a budget of
    /// 5 keeps its size (a 2×2 grid), so every value can be traced to its pixel.
    #[test]
    fn patches_are_rows_of_pixels_with_their_channels_and_then_zeros() {
        let (patch, budget) = (16u32, 5u32);
        let img = RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 8 + y) as u8, (y * 8 + x) as u8, (x * y) as u8])
        });
        let mut p = Preprocess::siglip(0);
        p.filter = resize::Filter::Bilinear;
        let patches = Patches {
            size: patch,
            budget,
        };
        let mut out = vec![f32::NAN; (budget * 3 * patch * patch) as usize];
        let grid = write_patches(&img, &p, patches, &mut out);
        assert_eq!((grid.rows, grid.cols), (2, 2));
        let tables = normalize::tables(&p);
        let per_patch = (3 * patch * patch) as usize;
        for (r, c, y, x, ch) in every_value() {
            let pixel = img.get_pixel(c * patch + x, r * patch + y)[ch];
            let at = (r * 2 + c) as usize * per_patch + ((y * patch + x) * 3) as usize + ch;
            assert_eq!(
                out[at],
                tables[ch][usize::from(pixel)],
                "patch {r},{c} pixel {x},{y}"
            );
        }
        assert!(out[4 * per_patch..].iter().all(|v| *v == 0.0), "padding");
    }

    /// Every (patch row, patch column, y, x, channel) of a 2×2 grid of 16-pixel patches.
    fn every_value() -> impl Iterator<Item = (u32, u32, u32, u32, usize)> {
        (0..2).flat_map(|r| {
            (0..2).flat_map(move |c| {
                (0..16).flat_map(move |y| {
                    (0..16).flat_map(move |x| (0..3).map(move |ch| (r, c, y, x, ch)))
                })
            })
        })
    }
}
