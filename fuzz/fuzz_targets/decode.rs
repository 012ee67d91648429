//! Image decoding, every accepted format, both conventions: whatever the bytes, `decode` returns
//! an image or an error, within the limits' memory and without aborting.
//!
//! The first byte picks the convention; the rest is the file. Limits are small (1 Mpx) so that
//! each run is fast and an allocation past them shows as a crash (`-rss_limit_mb`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use siglip_serve::model::image::{decode, Convention, ImageLimits};

const LIMITS: ImageLimits = ImageLimits {
    max_bytes: 1 << 20,
    max_pixels: 1 << 20,
    max_side: 4096,
    ..ImageLimits::DEFAULT
};

fuzz_target!(
    init: {
        // libjpeg reports corrupt data by unwinding (caught inside `decode`), and a panicking
        // third-party decoder is caught there too: those are answers, not crashes. libfuzzer-sys
        // turns every panic into an abort, so put the default hook back; what still crashes is an
        // abort, an allocation past the RSS limit, a timeout or a panic that escapes `decode`.
        let _ = std::panic::take_hook();
    },
    |data: &[u8]| {
        let Some((&first, file)) = data.split_first() else {
            return;
        };
        let convention = if first & 1 == 0 {
            Convention::Processor
        } else {
            Convention::Pipeline
        };
        if let Ok(img) = decode(file, &LIMITS, convention) {
            assert!(u64::from(img.width()) * u64::from(img.height()) <= LIMITS.max_pixels);
        }
    }
);
