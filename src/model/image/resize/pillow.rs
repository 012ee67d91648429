//! Pillow 13's weights (`precompute_coeffs`, `normalize_coeffs_8bpc`) and pass order.

use super::{to_fixed, weights as windows, Filter, Weights};

/// Fractional bits of the fixed-point weights: 32 − 8 (result) − 2 (overflow headroom).
pub(super) const PRECISION_BITS: u32 = 32 - 8 - 2;

pub(super) fn weights(in_size: u32, out_size: u32, filter: Filter) -> Weights {
    windows(
        in_size,
        out_size,
        filter,
        |x| filter.pillow_weight(x),
        |rows| {
            let fixed = rows
                .iter()
                .map(|row| row.iter().map(|&w| to_fixed(w, PRECISION_BITS)).collect())
                .collect();
            (fixed, PRECISION_BITS)
        },
    )
}

/// Pillow 13 runs the vertical pass first when the height shrinks, and by more than twice as
/// many pixels as the width does.
pub(super) fn vertical_first(in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> bool {
    out_h < in_h && i64::from(in_h) - i64::from(out_h) > 2 * (i64::from(in_w) - i64::from(out_w))
}
