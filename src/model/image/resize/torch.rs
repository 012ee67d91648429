//! torch's weights for uint8 antialiased `interpolate` (`_compute_indices_int16_weights_aa` in
//! `aten/src/ATen/native/cpu/UpSampleKernel.cpp`), which the AVX2 kernel and the portable one
//! both use: the same windows and `f64` weights as Pillow, with the cubic's outer lobe written
//! as `((a·x − 5a)·x + 8a)·x − 4a`, and as many fractional bits as the largest weight leaves
//! room for in an `i16`, at most 22.

use super::{to_fixed, weights as windows, Filter, Weights};

pub(super) fn weights(in_size: u32, out_size: u32, filter: Filter) -> Weights {
    windows(
        in_size,
        out_size,
        filter,
        |x| weight(filter, x),
        |rows| {
            let largest = rows.iter().flatten().copied().fold(f64::MIN, f64::max);
            let precision = precision(largest);
            let fixed = rows
                .iter()
                .map(|row| row.iter().map(|&w| to_fixed(w, precision)).collect())
                .collect();
            (fixed, precision)
        },
    )
}

/// torch's `aa_filter` of each interpolation helper (bicubic with Keys' a = −0.5, as Pillow).
fn weight(filter: Filter, x: f64) -> f64 {
    let x = x.abs();
    match filter {
        Filter::Bilinear if x < 1.0 => 1.0 - x,
        Filter::Bilinear => 0.0,
        Filter::Bicubic => {
            const A: f64 = -0.5;
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
            } else {
                0.0
            }
        }
    }
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
