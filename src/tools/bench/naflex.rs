//! The NaFlex preprocessing phase: host preprocessing per image of a SigLIP 2 NaFlex model at a
//! patch budget M against the fixed-resolution path at the same pixel count (a square of side
//! √M·P, same filter and normalisation), on the same photos decoded once, in this process.
//! Each photo is preprocessed both ways in turn, so that the machine's load falls on both alike.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::model::image::{self, Convention, ImageLimits, ImageProcessor};
use crate::model::manifest::Manifest;

#[derive(Debug, Serialize)]
pub struct PreprocessReport {
    pub max_num_patches: u32,
    /// The side of the square with M·P² pixels: the fixed-resolution path compared with.
    pub square_size: u32,
    pub naflex_ms: f64,
    pub square_ms: f64,
    /// NaFlex's time over the square's.
    pub ratio: f64,
}

impl PreprocessReport {
    pub fn print(&self) {
        println!(
            "preprocess    NaFlex at {} patches {:.2} ms/img, square {}px {:.2} ms/img ({:.2}x)",
            self.max_num_patches, self.naflex_ms, self.square_size, self.square_ms, self.ratio
        );
    }
}

/// Preprocesses `photos` (encoded) both ways for at least `duration` and 3 rounds.
pub fn run(
    model_dir: &Path,
    photos: &[Vec<u8>],
    budget: u32,
    duration: Duration,
) -> anyhow::Result<PreprocessReport> {
    let manifest = Manifest::load(model_dir)?;
    let naflex = manifest.image.preprocess(0, ImageProcessor::Pil);
    let Some(patches) = naflex.patches else {
        anyhow::bail!("{} is not a NaFlex model", model_dir.display());
    };
    let naflex = naflex.with_budget(budget);
    let square_size = ((budget as f64).sqrt() * f64::from(patches.size)).round() as u32;
    let square = image::Preprocess {
        size: square_size,
        patches: None,
        ..naflex
    };
    let decoded = photos
        .iter()
        .map(|bytes| {
            image::decode(
                bytes,
                &ImageLimits::default(),
                Convention::Processor,
                naflex.transparency,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (mut naflex_time, mut square_time, mut images) = (Duration::ZERO, Duration::ZERO, 0);
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < 3 || started.elapsed() < duration {
        for rgb in &decoded {
            for (prep, time) in [(&naflex, &mut naflex_time), (&square, &mut square_time)] {
                let t = Instant::now();
                std::hint::black_box(image::preprocess(rgb, prep));
                *time += t.elapsed();
            }
            images += 1;
        }
        rounds += 1;
    }
    let per_image = |time: Duration| time.as_secs_f64() * 1e3 / images as f64;
    let (naflex_ms, square_ms) = (per_image(naflex_time), per_image(square_time));
    Ok(PreprocessReport {
        max_num_patches: budget,
        square_size,
        naflex_ms,
        square_ms,
        ratio: naflex_ms / square_ms,
    })
}
