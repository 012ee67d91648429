//! The checks of a suite: each reads its reference, runs this crate's code on the same inputs
//! and gives the rows of the report.

use std::{path::Path, time::Instant};

use super::{
    diff, file_name, image_input, load_image, read_reference, tensor, to_f32, Check, ModelRow,
    NaflexCheck, NaflexRow, PixelRow, RegionRow, TokenRow,
};
use crate::error::{Error, Result};
use crate::model::{
    device::{device_name, DType, DTypeChoice, DeviceChoice},
    image::{self, ImageLimits, Pixels},
    manifest::Manifest,
    scores::{sigmoid, Embeddings},
    tokenizer::TextTokenizer,
    LoadOptions, Model,
};

pub(super) fn pixels(base: &Path, check: &Check) -> Result<Vec<PixelRow>> {
    let (tensors, sidecar) = read_reference(base, check)?;
    let reference = tensor(&tensors, "pixel_values")?;
    let size = reference.size()[2] as u32;
    let manifest = Manifest::load(&base.join(&check.model_dir))?;
    let prep = manifest.image.preprocess(size, check.processor);
    sidecar
        .images
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let rgb = load_image(&base.join(file), check, &prep)?;
            let ours = image::preprocess(&rgb, &prep).values;
            let (max_abs, mean_abs) = diff(&ours, &to_f32(&reference.get(i as i64))?);
            Ok(PixelRow {
                name: check.name.clone(),
                convention: check.convention,
                processor: check.processor,
                file: file_name(file),
                size,
                max_abs,
                mean_abs,
            })
        })
        .collect()
}

/// One row per image: its patches at the check's budget, the grid and the mask they imply,
/// against `Siglip2ImageProcessorPil`'s.
pub(super) fn naflex_pixels(base: &Path, naflex: &NaflexCheck) -> Result<Vec<NaflexRow>> {
    let check = &naflex.check;
    let (tensors, sidecar) = read_reference(base, check)?;
    let (reference, masks, grids) = (
        tensor(&tensors, "pixel_values")?,
        tensor(&tensors, "pixel_attention_mask")?,
        tensor(&tensors, "spatial_shapes")?,
    );
    let manifest = Manifest::load(&base.join(&check.model_dir))?;
    if manifest.image.naflex.is_none() {
        return Err(Error::Model(format!(
            "{}: not a NaFlex model",
            check.model_dir.display()
        )));
    }
    let budget = naflex.max_num_patches;
    let prep = manifest
        .image
        .preprocess(0, check.processor)
        .with_budget(budget);
    sidecar
        .images
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let rgb = load_image(&base.join(file), check, &prep)?;
            let Pixels { values: ours, grid } = image::preprocess(&rgb, &prep);
            let grid = grid.expect("NaFlex preprocessing gives a grid");
            let want_grid = Vec::<i64>::try_from(&grids.get(i as i64))?;
            let want_mask = Vec::<i64>::try_from(&masks.get(i as i64))?;
            let mask: Vec<i64> = (0..budget as usize)
                .map(|p| i64::from(p < grid.patches()))
                .collect();
            let (max_abs, _) = diff(&ours, &to_f32(&reference.get(i as i64))?);
            Ok(NaflexRow {
                name: check.name.clone(),
                convention: check.convention,
                file: file_name(file),
                grid: (grid.rows, grid.cols),
                grid_matches: want_grid == [i64::from(grid.rows), i64::from(grid.cols)],
                mask_matches: mask == want_mask,
                max_abs,
            })
        })
        .collect()
}

/// One row per text class, in the order the classes first appear; each class is tokenised as one
/// batch, and timed.
pub(super) fn tokens(base: &Path, check: &Check) -> Result<Vec<TokenRow>> {
    let (tensors, sidecar) = read_reference(base, check)?;
    let reference = tensor(&tensors, "input_ids")?;
    let dir = base.join(&check.model_dir);
    let manifest = Manifest::load(&dir)?;
    let tokenizer = TextTokenizer::load(&dir, &manifest.files, &manifest.text)?;
    let mut classes: Vec<(&str, Vec<usize>)> = Vec::new();
    for i in 0..sidecar.texts.len() {
        let class = sidecar.classes.get(i).map_or("", String::as_str);
        match classes.iter_mut().find(|(c, _)| *c == class) {
            Some((_, members)) => members.push(i),
            None => classes.push((class, vec![i])),
        }
    }
    classes
        .into_iter()
        .map(|(class, members)| {
            let texts: Vec<&str> = members.iter().map(|&i| sidecar.texts[i].as_str()).collect();
            let started = Instant::now();
            let ours = tokenizer.encode(&texts)?;
            let elapsed = started.elapsed();
            let mut row = TokenRow {
                name: check.name.clone(),
                class: class.to_owned(),
                total: texts.len(),
                mismatches: 0,
                micros_per_text: elapsed.as_secs_f64() * 1e6 / texts.len() as f64,
                examples: Vec::new(),
            };
            for (&i, got) in members.iter().zip(&ours) {
                if Vec::<i64>::try_from(&reference.get(i as i64))? != got.ids {
                    row.mismatches += 1;
                    if row.examples.len() < 3 {
                        row.examples.push(format!("{:?}", sidecar.texts[i]));
                    }
                }
            }
            Ok(row)
        })
        .collect()
}

/// `max_patches`: a NaFlex model's patch budget (its default when `None`).
pub(super) fn model(
    base: &Path,
    check: &Check,
    device: DeviceChoice,
    dtype: DType,
    max_patches: Option<u32>,
) -> Result<ModelRow> {
    let (tensors, sidecar) = read_reference(base, check)?;
    let model = load_model(base, check, device, dtype)?;
    let prep = match max_patches {
        Some(budget) => model.preprocess().with_budget(budget),
        None => *model.preprocess(),
    };
    let rows = sidecar
        .images
        .iter()
        .map(|file| {
            Ok(image::preprocess(
                &load_image(&base.join(file), check, &prep)?,
                &prep,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let rows: Vec<&Pixels> = rows.iter().collect();
    let image_embeds = in_passes(&model, &rows, |chunk| model.embed_rows(chunk))?;
    let text_embeds = model.embed_texts(&sidecar.texts)?;
    let logits = model.head().logits(&image_embeds, &text_embeds);
    let probs: Vec<f32> = logits.iter().copied().map(sigmoid).collect();
    let ref_probs = to_f32(tensor(&tensors, "probs")?)?;
    let range = ref_probs
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(*p), hi.max(*p))
        });
    Ok(ModelRow {
        name: match prep.patches {
            None => check.name.clone(),
            Some(p) => format!("{}@{}", check.name, p.budget),
        },
        max_num_patches: prep.patches.map(|p| p.budget),
        convention: check.convention,
        processor: check.processor,
        device: device_name(model.device()),
        dtype: model.dtype().name().to_string(),
        backend: model.backend().to_string(),
        image_embeds_max: diff(
            &image_embeds.data,
            &to_f32(tensor(&tensors, "image_embeds")?)?,
        )
        .0,
        text_embeds_max: diff(
            &text_embeds.data,
            &to_f32(tensor(&tensors, "text_embeds")?)?,
        )
        .0,
        logits_max: diff(&logits, &to_f32(tensor(&tensors, "logits")?)?).0,
        probs_max: diff(&probs, &ref_probs).0,
        ref_probs_range: range,
    })
}

fn load_model(base: &Path, check: &Check, device: DeviceChoice, dtype: DType) -> Result<Model> {
    Model::load(&LoadOptions {
        device,
        dtype: DTypeChoice::Fixed(dtype),
        warmup_rounds: 1,
        image_processor: check.processor,
        ..LoadOptions::new(base.join(&check.model_dir))
    })
}

/// Image embeddings in passes no larger than a compiled tower accepts.
fn in_passes<T>(
    model: &Model,
    images: &[T],
    embed: impl Fn(&[T]) -> Result<Embeddings>,
) -> Result<Embeddings> {
    let pass = model.max_batch().unwrap_or(images.len()).max(1);
    let mut embeds = embed(&images[..pass.min(images.len())])?;
    for chunk in images.chunks(pass).skip(1) {
        embeds.data.extend(embed(chunk)?.data);
    }
    Ok(embeds)
}

/// Each file is decoded once with all its regions, through [`ImageInput::prepare_regions`] (what
/// the server runs for a frame's regions); the rows are compared with the reference's pixel
/// values, then embedded by the fp32 model and scored against the sidecar's texts.
///
/// [`ImageInput::prepare_regions`]: crate::infer::ImageInput::prepare_regions
pub(super) fn regions(base: &Path, check: &Check, device: DeviceChoice) -> Result<Vec<RegionRow>> {
    let (tensors, sidecar) = read_reference(base, check)?;
    if sidecar.regions.len() != sidecar.images.len() {
        return Err(Error::Model(format!(
            "{}: {} regions for {} images",
            check.reference.display(),
            sidecar.regions.len(),
            sidecar.images.len()
        )));
    }
    let reference = tensor(&tensors, "pixel_values")?;
    let model = load_model(base, check, device, DType::Float32)?;
    let prep = model
        .manifest()
        .image
        .preprocess(reference.size()[2] as u32, check.processor);
    let mut rows: Vec<Pixels> = Vec::with_capacity(sidecar.images.len());
    // Consecutive rows of one file form one frame with several regions.
    let mut start = 0;
    while start < sidecar.images.len() {
        let file = &sidecar.images[start];
        let end = start
            + sidecar.images[start..]
                .iter()
                .take_while(|f| *f == file)
                .count();
        let path = base.join(file);
        rows.extend(
            image_input(&path)?
                .prepare_regions(
                    &ImageLimits::default(),
                    check.convention,
                    &prep,
                    &sidecar.regions[start..end],
                )
                .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?,
        );
        start = end;
    }
    let refs: Vec<&Pixels> = rows.iter().collect();
    let image_embeds = in_passes(&model, &refs, |chunk| model.embed_rows(chunk))?;
    let text_embeds = model.embed_texts(&sidecar.texts)?;
    let probs: Vec<f32> = model
        .head()
        .logits(&image_embeds, &text_embeds)
        .into_iter()
        .map(sigmoid)
        .collect();
    let ref_probs = to_f32(tensor(&tensors, "probs")?)?;
    let labels = sidecar.texts.len();
    rows.iter()
        .enumerate()
        .map(|(i, ours)| {
            let span = i * labels..(i + 1) * labels;
            Ok(RegionRow {
                name: check.name.clone(),
                convention: check.convention,
                processor: check.processor,
                file: file_name(&sidecar.images[i]),
                region: sidecar.regions[i],
                pixels_max: diff(&ours.values, &to_f32(&reference.get(i as i64))?).0,
                probs_max: diff(&probs[span.clone()], &ref_probs[span]).0,
            })
        })
        .collect()
}
