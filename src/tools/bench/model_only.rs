//! The vision tower alone, in this process: the ceiling the server is measured against. Same
//! model directory, device, dtype and threads as the server; passes overlapped as the server's
//! worker overlaps them on a GPU.

use std::time::{Duration, Instant};

use crate::config::ModelArgs;
use crate::model::{
    image::{self, Pixels},
    LoadOptions, Model,
};

/// The vision tower alone, at `batch`, for `duration` (after warm-up): images/s, and ms per
/// pass from submitting it to its embeddings (staging the pixels not counted, as the server's
/// reported inference time does not count it). Passes are overlapped as the server's worker does
/// on a GPU (the next batch's pixels are copied while one runs), so this is the tower's own rate.
/// A NaFlex model runs at patch budget `max_patches` (its default when `None`).
pub(super) fn run(
    args: &ModelArgs,
    batch: usize,
    max_patches: Option<u32>,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    // Warmed up below, at this batch size only.
    let model = Model::load(&LoadOptions {
        warmup_rounds: 0,
        ..args.load_options(args.single_dir()?, batch)
    })?;
    // Varied values in the normalised range: constant inputs can run faster than photos. A
    // NaFlex model's images fill their budget (the tower's cost does not depend on the grid).
    let prep = match max_patches {
        Some(budget) => model.preprocess().with_budget(budget),
        None => *model.preprocess(),
    };
    let per_image = prep.values_per_image();
    let grid = prep.patches.map(|p| image::Grid {
        rows: 1,
        cols: p.budget,
    });
    let images: Vec<Pixels> = (0..batch)
        .map(|b| Pixels {
            values: (0..per_image)
                .map(|i| ((b * per_image + i) * 7919 % 251) as f32 / 125.0 - 1.0)
                .collect(),
            grid,
        })
        .collect();
    let rows: Vec<&Pixels> = images.iter().collect();
    // Warm-up: the loop measured, for a tenth of the run and at least 5 passes. The optimising
    // executor profiles and compiles for each new shape during the first passes, which can stall
    // one of them for seconds; the server's own warm-up has paid that before it serves.
    passes(&model, &rows, duration / 10, 5)?;
    let run = passes(&model, &rows, duration, 1)?;
    Ok((
        run.images as f64 / run.elapsed.as_secs_f64(),
        run.in_model.as_secs_f64() * 1e3 / (run.images / batch) as f64,
    ))
}

struct Passes {
    images: usize,
    elapsed: Duration,
    /// Time in the model's submit and finish calls.
    in_model: Duration,
}

/// Passes over `rows` for at least `duration` and `min` passes, each staged while the one before
/// runs, as the server's worker does on a GPU.
fn passes(
    model: &Model,
    rows: &[&Pixels],
    duration: Duration,
    min: usize,
) -> anyhow::Result<Passes> {
    let started = Instant::now();
    let mut in_model = Duration::ZERO;
    let mut images = 0;
    let first = model.stage_rows(rows)?;
    let t = Instant::now();
    let mut running = model.submit(first)?;
    in_model += t.elapsed();
    while started.elapsed() < duration || images < min * rows.len() {
        let next = model.stage_rows(rows)?;
        let t = Instant::now();
        model.finish(running)?;
        running = model.submit(next)?;
        in_model += t.elapsed();
        images += rows.len();
    }
    let t = Instant::now();
    model.finish(running)?;
    in_model += t.elapsed();
    images += rows.len();
    Ok(Passes {
        images,
        elapsed: started.elapsed(),
        in_model,
    })
}
