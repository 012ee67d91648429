//! Rescale and normalise into the model's CHW float layout.

use image::RgbImage;

use super::Preprocess;

/// Writes `img` (already `p.size` square) as CHW floats into `out`.
///
/// The reference computes `f32(f64(v) · rescale)` (numpy upcasts before the multiply), then
/// `(x − mean) / std` in `f32`. With 8-bit input that is one 256-entry table per channel,
/// built with the same operations so every value is bit-identical.
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
    let tables: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| ((v as f64 * p.rescale) as f32 - p.mean[c]) / p.std[c])
    });
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = tables[0][usize::from(px[0])];
        g[i] = tables[1][usize::from(px[1])];
        b[i] = tables[2][usize::from(px[2])];
    }
}
