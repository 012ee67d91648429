//! What one caller may ask of the core.

use crate::error::{Error, Result};
use crate::model::image::ImageLimits;

/// What one caller may ask of the core. The command line's `--max-*` flags fill it
/// (`config::LimitArgs`); their defaults are these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub image: ImageLimits,
    /// Texts (labels) in one request or stream configuration.
    pub max_texts: usize,
    /// One text, in bytes.
    pub max_text_bytes: usize,
    /// Images in one EmbedImage request.
    pub max_images: usize,
    /// Regions of one stream frame, each classified on its own (`--max-regions`).
    pub max_regions: usize,
    /// Images accepted and not yet answered, over all callers: bounds the memory of
    /// preprocessed images.
    pub max_pending_images: usize,
    /// Header-declared pixels of the images being decoded at once: bounds the memory of
    /// decoding (at least `image.max_pixels`, at most `u32::MAX`).
    pub max_decoding_pixels: u64,
    /// Texts not in the cache, accepted and not yet embedded by the text tower, over all
    /// callers: bounds text work the way `max_pending_images` bounds image work.
    pub max_pending_texts: usize,
}

impl Limits {
    pub const DEFAULT: Self = Self {
        image: ImageLimits::DEFAULT,
        max_texts: 256,
        max_text_bytes: 2048,
        max_images: 64,
        max_regions: 16,
        max_pending_images: 512,
        max_decoding_pixels: 100_000_000,
        max_pending_texts: 1024,
    };

    /// Refuses a label list over the limits (--max-texts, --max-text-bytes) or empty: a check of
    /// the request alone, before any work (and apart from `Infer`, so that the fuzz target runs it).
    pub fn check_texts(&self, texts: &[String]) -> Result<()> {
        if texts.is_empty() {
            return Err(Error::InvalidArgument(
                "no texts given: send at least one label".into(),
            ));
        }
        if texts.len() > self.max_texts {
            return Err(Error::InvalidArgument(format!(
                "{} texts exceed the limit of {} per request (--max-texts)",
                texts.len(),
                self.max_texts
            )));
        }
        if let Some((i, t)) = texts
            .iter()
            .enumerate()
            .find(|(_, t)| t.len() > self.max_text_bytes)
        {
            return Err(Error::InvalidArgument(format!(
                "text {i} is {} bytes long, over the limit of {} bytes (--max-text-bytes)",
                t.len(),
                self.max_text_bytes
            )));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}
