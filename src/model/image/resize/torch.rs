//! torch's weights for uint8 antialiased `interpolate` (`_compute_indices_int16_weights_aa` in
//! `aten/src/ATen/native/cpu/UpSampleKernel.cpp`), which the AVX2 kernel and the portable one
//! both use: the same windows and `f64` weights as Pillow, with the cubic's outer lobe written
//! as `((a·x − 5a)·x + 8a)·x − 4a`, and as many fractional bits as the largest weight leaves
//! room for in an `i16`, at most 22.

use super::{Filter, Weights, A};

pub(super) fn weights(in_size: u32, out_size: u32, filter: Filter) -> Weights {
    super::weights(in_size, out_size, filter, outer_lobe, precision)
}

/// The cubic's `1 ≤ x < 2` as torch writes it (`upsample_bicubic2d_aa`'s filter): the same
/// polynomial as Pillow's, evaluated in another order, so rounded differently.
fn outer_lobe(x: f64) -> f64 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// The fractional bits: the most, up to 22, for which the largest weight still rounds to less
/// than 2¹⁵ with one bit more (torch stops at the first count whose successor would not fit).
fn precision(largest: f64) -> u32 {
    let mut bits = 0;
    while bits < 22 {
        if (0.5 + largest * f64::from(1u32 << (bits + 1))) as i32 >= 1 << 15 {
            break;
        }
        bits += 1;
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_leaves_room_in_an_i16() {
        // A weight of 1 (enlarging to the same grid) takes 14 bits; a widened filter's smaller
        // weights take more, never over 22.
        assert_eq!(precision(1.0), 14);
        assert_eq!(precision(0.6), 15);
        assert_eq!(precision(0.25), 16);
        assert_eq!(precision(1e-9), 22);
        for (i, o) in [(512, 224), (4000, 384), (37, 224), (224, 1)] {
            let w = weights(i, o, Filter::Bicubic);
            let largest = w.k.iter().copied().max().unwrap();
            assert!(largest < 1 << 15 && w.precision <= 22, "{i}->{o}");
        }
    }
}
