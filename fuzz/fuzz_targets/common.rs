//! What every target shares: small limits, so that each run is fast and an allocation past them
//! shows as a crash (`-rss_limit_mb`), and what an answer to bad input must be.

use siglip_serve::error::Error;
use siglip_serve::model::image::{
    Filter, ImageLimits, ImageProcessor, Patches, Preprocess, Transparency,
};
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
        processor,
        ..Preprocess::siglip(16)
    }
}

/// SigLIP 2 NaFlex's preprocessing with a small budget (16 patches of 16 pixels): the size
/// search and the patches run on every decoded image, whatever its aspect ratio.
pub fn naflex(processor: ImageProcessor) -> Preprocess {
    Preprocess {
        patches: Some(Patches {
            size: 16,
            budget: 16,
        }),
        filter: Filter::Bilinear,
        transparency: Transparency::Drop,
        ..preprocess(processor)
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
