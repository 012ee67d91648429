//! What every target shares: small limits, so that each run is fast and an allocation past them
//! shows as a crash (`-rss_limit_mb`), and what an answer to bad input must be.

use siglip_serve::error::Error;
use siglip_serve::model::image::{Filter, ImageLimits, ImageProcessor, Preprocess};
use tonic::{Code, Status};

/// 1 MiB, 1 Mpx: the server's defaults are 32 MiB and 50 Mpx, the code paths the same.
pub const IMAGE_LIMITS: ImageLimits = ImageLimits {
    max_bytes: 1 << 20,
    max_pixels: 1 << 20,
    max_side: 4096,
    ..ImageLimits::DEFAULT
};

/// SigLIP's preprocessing at a small size, by `processor`'s resampler: the resize runs on every
/// decoded image, cheaply.
pub fn preprocess(processor: ImageProcessor) -> Preprocess {
    Preprocess {
        size: 16,
        filter: Filter::Bicubic,
        rescale: 1.0 / 255.0,
        mean: [0.5; 3],
        std: [0.5; 3],
        processor,
    }
}

/// libjpeg reports corrupt data by unwinding (caught inside `decode`), and a panicking
/// third-party decoder is caught there too: those are answers, not crashes. libfuzzer-sys turns
/// every panic into an abort through its panic hook, so put the default hook back; what still
/// crashes is an abort, an allocation past the RSS limit, a timeout or a panic that escapes.
pub fn keep_caught_panics() {
    let _ = std::panic::take_hook();
}

/// Bad input is the client's to fix: INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for a limit, with a
/// message; never INTERNAL (the server's fault) or anything else.
pub fn assert_answered(error: Error) {
    let status = Status::from(error);
    assert!(
        matches!(
            status.code(),
            Code::InvalidArgument | Code::ResourceExhausted
        ),
        "bad input answered {:?}: {}",
        status.code(),
        status.message()
    );
    assert!(
        !status.message().is_empty(),
        "{:?} without a message",
        status.code()
    );
}
