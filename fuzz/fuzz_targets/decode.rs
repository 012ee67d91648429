//! Image decoding, every accepted format, both conventions: whatever the bytes, the header
//! check and `decode` answer with an image or a client error, within the limits' memory and
//! without aborting; a decoded image has the size its header declared (admission charges
//! decoding by it) and preprocesses by either image processor's resampler.
//!
//! The first byte picks the convention (bit 0), the processor (bit 1) and SigLIP's preprocessing
//! or SigLIP 2 NaFlex's (bit 2: its transparency rule and patches); the rest is the file.
#![no_main]

mod common;

use common::{assert_answered, IMAGE_LIMITS};
use libfuzzer_sys::fuzz_target;
use siglip_serve::model::image::{declared_pixels, decode, preprocess, Convention, ImageProcessor};

fuzz_target!(
    init: common::keep_caught_panics(),
    |data: &[u8]| {
        let Some((&first, file)) = data.split_first() else {
            return;
        };
        let convention = if first & 1 == 0 {
            Convention::Processor
        } else {
            Convention::Pipeline
        };
        let processor = if first & 2 == 0 {
            ImageProcessor::Pil
        } else {
            ImageProcessor::Torchvision
        };
        let prep = if first & 4 == 0 {
            common::preprocess(processor)
        } else {
            common::naflex(processor)
        };
        let declared = declared_pixels(file, &IMAGE_LIMITS);
        match decode(file, &IMAGE_LIMITS, convention, prep.transparency) {
            Ok(img) => {
                let pixels = u64::from(img.width()) * u64::from(img.height());
                assert!(pixels <= IMAGE_LIMITS.max_pixels);
                match declared {
                    Ok(declared) => assert_eq!(
                        pixels, declared,
                        "decoded {}x{}, but the header declared {declared} pixels",
                        img.width(),
                        img.height()
                    ),
                    Err(e) => panic!("decoded {}x{}, but the header check said: {e}", img.width(), img.height()),
                }
                preprocess(&img, &prep);
            }
            Err(e) => assert_answered(e.into()),
        }
        if let Err(e) = declared {
            assert_answered(e.into());
        }
    }
);
