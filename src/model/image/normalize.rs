//! Rescale and normalise into the model's CHW float layout.

use image::RgbImage;

use super::{ImageProcessor, Preprocess};

/// Writes `img` (already `p.size` square) as CHW floats into `out`.
///
/// With 8-bit input every output is one of 256 values per channel, so each channel is a table
/// built with the reference's own operations, bit for bit:
/// - PIL backend: `f32(f64(v) · rescale)` (numpy upcasts before the multiply; an `f32` 1/255
///   would change the last bit of about half the values), then `(x − mean) / std` in `f32`;
/// - torchvision backend: rescaling fused into the normalisation (`_fuse_mean_std_and_rescale_factor`):
///   `mean' = mean · f32(1 / rescale)` and `std' = std · f32(1 / rescale)` in `f32`, then
///   `(f32(v) − mean') / std'` (`tvF.normalize`).
pub(super) fn write_chw(img: &RgbImage, p: &Preprocess, out: &mut [f32]) {
    let plane = img.width() as usize * img.height() as usize;
    assert_eq!(
        out.len(),
        3 * plane,
        "output holds {} floats, a {}x{} RGB image needs {}",
        out.len(),
        img.width(),
        img.height(),
        3 * plane
    );
    let tables = tables(p);
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = tables[0][usize::from(px[0])];
        g[i] = tables[1][usize::from(px[1])];
        b[i] = tables[2][usize::from(px[2])];
    }
}

/// The normalised value of each 8-bit level, per channel (R, G, B).
pub(super) fn tables(p: &Preprocess) -> [[f32; 256]; 3] {
    std::array::from_fn(|c| table(p, c))
}

/// The normalised value of each 8-bit level of channel `c`.
fn table(p: &Preprocess, c: usize) -> [f32; 256] {
    match p.processor {
        ImageProcessor::Pil => {
            std::array::from_fn(|v| ((v as f64 * p.rescale) as f32 - p.mean[c]) / p.std[c])
        }
        ImageProcessor::Torchvision => {
            // torch multiplies an f32 tensor by a Python float in f32.
            let inverse = (1.0 / p.rescale) as f32;
            let (mean, std) = (p.mean[c] * inverse, p.std[c] * inverse);
            std::array::from_fn(|v| (v as f32 - mean) / std)
        }
    }
}
