//! Pillow 13's weights (`precompute_coeffs`, `normalize_coeffs_8bpc`) and pass order.

use super::{Filter, Weights, A};

/// Fractional bits of the fixed-point weights: 32 − 8 (result) − 2 (overflow headroom).
const PRECISION_BITS: u32 = 32 - 8 - 2;

pub(super) fn weights(in_size: u32, out_size: u32, filter: Filter) -> Weights {
    super::weights(in_size, out_size, filter, outer_lobe, |_| PRECISION_BITS)
}

/// `bicubic_filter` for `1 ≤ x < 2`, as Pillow writes it.
fn outer_lobe(x: f64) -> f64 {
    (((x - 5.0) * x + 8.0) * x - 4.0) * A
}

/// Pillow 13 runs the vertical pass first when the height shrinks, and by more than twice as
/// many pixels as the width does.
pub(super) fn vertical_first(in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> bool {
    out_h < in_h && i64::from(in_h) - i64::from(out_h) > 2 * (i64::from(in_w) - i64::from(out_w))
}
