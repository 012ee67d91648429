//! The core's budgets: images accepted and not yet answered (`--max-pending-images`), pixels
//! being decoded (`--max-decoding-pixels`) and texts not yet embedded (`--max-pending-texts`).
//! Images and texts over their budget are refused at once (the caller retries, as for a full
//! queue); a decode waits its turn.

use std::sync::Arc;

use ::metrics::gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Limits;
use crate::error::{Error, Result};
use crate::metrics;

/// A share of one of the budgets, shown on its gauge while held and given back when dropped
/// (answered, failed or cancelled).
pub(super) struct Admitted {
    _permit: OwnedSemaphorePermit,
    gauge: &'static str,
    amount: u32,
}

impl Admitted {
    fn new(permit: OwnedSemaphorePermit, gauge: &'static str) -> Self {
        let amount = permit.num_permits() as u32;
        gauge!(gauge).increment(f64::from(amount));
        Self {
            _permit: permit,
            gauge,
            amount,
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        gauge!(self.gauge).decrement(f64::from(self.amount));
    }
}

pub(super) struct Admission {
    max_pending_images: usize,
    max_decoding_pixels: u64,
    max_pending_texts: usize,
    /// One permit per image accepted and not yet answered: preprocessed images are large
    /// (1.8 MB at 384 px), so this, not the queue's job count, bounds memory.
    pending_images: Arc<Semaphore>,
    /// One permit per header-declared pixel being decoded.
    decoding_pixels: Arc<Semaphore>,
    /// One permit per text accepted and not yet embedded.
    pending_texts: Arc<Semaphore>,
}

impl Admission {
    pub(super) fn new(limits: &Limits) -> Self {
        Self {
            max_pending_images: limits.max_pending_images,
            max_decoding_pixels: limits.max_decoding_pixels,
            max_pending_texts: limits.max_pending_texts,
            pending_images: Arc::new(Semaphore::new(limits.max_pending_images)),
            decoding_pixels: Arc::new(Semaphore::new(limits.max_decoding_pixels as usize)),
            pending_texts: Arc::new(Semaphore::new(limits.max_pending_texts)),
        }
    }

    /// Images accepted and not yet answered.
    pub(super) fn pending_images(&self) -> usize {
        self.max_pending_images - self.pending_images.available_permits()
    }

    /// Texts accepted and not yet embedded.
    pub(super) fn pending_texts(&self) -> usize {
        self.max_pending_texts - self.pending_texts.available_permits()
    }

    /// Admits `images` more images, or refuses them at once when that would pass
    /// `--max-pending-images`.
    pub(super) fn images(&self, images: usize) -> Result<Admitted> {
        let permit = Arc::clone(&self.pending_images)
            .try_acquire_many_owned(images as u32)
            // Never closed: no permits is the only way to fail.
            .map_err(|_| {
                Error::ResourceExhausted(format!(
                    "server overloaded: {} of {} pending images in use, {images} more do not fit \
                     (--max-pending-images); retry with backoff",
                    self.pending_images(),
                    self.max_pending_images
                ))
            })?;
        Ok(Admitted::new(permit, metrics::PENDING_IMAGES))
    }

    /// Admits `texts` more texts, or refuses them at once when that would pass
    /// `--max-pending-texts`: a flood of unique labels must not queue text-tower work without
    /// bound in front of everyone else's images.
    pub(super) fn texts(&self, texts: usize) -> Result<Admitted> {
        let permit = Arc::clone(&self.pending_texts)
            .try_acquire_many_owned(texts as u32)
            .map_err(|_| {
                Error::ResourceExhausted(format!(
                    "server overloaded: {} of {} pending texts in use, {texts} more do not fit \
                     (--max-pending-texts); retry with backoff",
                    self.pending_texts(),
                    self.max_pending_texts
                ))
            })?;
        Ok(Admitted::new(permit, metrics::PENDING_TEXTS))
    }

    /// Takes an image's header-declared pixels from `--max-decoding-pixels`, waiting in line
    /// (FIFO: a large image is not overtaken forever by small ones) until decodes in progress
    /// leave room. The wait ends with the caller's deadline, and how many wait is bounded by
    /// `--max-pending-images`; refusing at once instead would refuse a large image whenever
    /// another large one is being decoded, though it only has to wait its turn.
    pub(super) async fn decoding(&self, pixels: u64) -> Result<Admitted> {
        // At most max_image_pixels <= max_decoding_pixels <= u32::MAX (LimitArgs::check).
        let pixels = pixels.clamp(1, self.max_decoding_pixels) as u32;
        let permit = Arc::clone(&self.decoding_pixels)
            .acquire_many_owned(pixels)
            .await
            .map_err(|_| Error::Unavailable("server is shutting down".into()))?;
        Ok(Admitted::new(permit, metrics::DECODING_PIXELS))
    }
}
