//! Decoding's cost, measured: the time of hostile progressive JPEGs at the scan limit, and the
//! memory peak of decoding a large image of each accepted format.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::hostile::progressive_jpeg_of_empty_scans;
use siglip_serve::model::image::{decode, Convention, ImageLimits};

fn limits_with_scans(max_jpeg_scans: usize) -> ImageLimits {
    ImageLimits {
        max_jpeg_scans,
        ..ImageLimits::DEFAULT
    }
}

fn time_decode(bytes: &[u8], limits: &ImageLimits) -> Duration {
    let started = Instant::now();
    let img = decode(bytes, limits, Convention::Processor).expect("decodes");
    assert!(img.width() > 0);
    started.elapsed()
}

/// What one scan costs, and so what a file at the scan limit costs: prints the figures (run
/// with `--ignored --nocapture`).
#[test]
#[ignore = "a measurement: seconds of decoding"]
fn hostile_jpeg_decode_time() {
    let max = ImageLimits::DEFAULT.max_jpeg_scans;
    for (w, h) in [(4000u16, 4000u16), (8000, 6250)] {
        for ac_scans in [1, max - 1, 1000] {
            let bytes = progressive_jpeg_of_empty_scans(w, h, ac_scans);
            let t = time_decode(&bytes, &limits_with_scans(usize::MAX));
            println!(
                "{w}x{h} {:>5} scans, {:>7} bytes: {:>7.0} ms",
                ac_scans + 1,
                bytes.len(),
                t.as_secs_f64() * 1e3
            );
        }
    }
}
