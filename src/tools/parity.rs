//! Parity with the reference implementation: compares this crate's preprocessing, tokenizer and
//! model runtime against what transformers computed for the same files and texts, and a stream's
//! regions against transformers on Pillow's crop of the same file.
//!
//! The reference files come from `python -m siglip_export reference*` (run, never typed in); a
//! *suite* file lists them. `siglip-serve parity --suite FILE` prints the table, and
//! `tests/parity.rs` asserts the thresholds on the same [`Report`].

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    time::Instant,
};

use serde::Deserialize;
use tch::Tensor;

use crate::error::{Error, Result};
use crate::infer::ImageInput;
use crate::model::{
    device::{device_name, DType, DTypeChoice, DeviceChoice},
    image::{Convention, ImageLimits, RawFormat, Region, RgbImage},
    manifest::Manifest,
    scores::{sigmoid, Embeddings},
    tokenizer::TextTokenizer,
    LoadOptions, Model,
};

/// `suite.json`: which references to check against which model directories. Paths are relative
/// to the suite file.
#[derive(Debug, Deserialize)]
pub struct Suite {
    /// Pixel values for many image files; preprocessing constants come from `model_dir`.
    pub pixels: Vec<Check>,
    /// Input ids for a text corpus.
    pub tokens: Vec<Check>,
    /// Embeddings, logits and probabilities end to end, per exported dtype.
    pub models: Vec<ModelCheck>,
    /// Regions of images end to end (fp32): the sidecar lists one region per image row.
    #[serde(default)]
    pub regions: Vec<Check>,
}

#[derive(Debug, Deserialize)]
pub struct Check {
    pub name: String,
    pub reference: PathBuf,
    pub model_dir: PathBuf,
    /// How the reference turned images into RGB (pixel and model checks).
    #[serde(default)]
    pub convention: Convention,
}

#[derive(Debug, Deserialize)]
pub struct ModelCheck {
    #[serde(flatten)]
    pub check: Check,
    pub dtype: DType,
}

/// The JSON sidecar written beside each reference `.safetensors`.
#[derive(Debug, Deserialize)]
struct Sidecar {
    #[serde(default)]
    images: Vec<PathBuf>,
    #[serde(default)]
    texts: Vec<String>,
    /// The class of each text (tokenizer corpora), parallel to `texts`.
    #[serde(default)]
    classes: Vec<String>,
    /// The region of each image row (region checks), parallel to `images`.
    #[serde(default)]
    regions: Vec<Region>,
}

#[derive(Debug, Clone)]
pub struct PixelRow {
    pub name: String,
    pub convention: Convention,
    pub file: String,
    pub size: u32,
    pub max_abs: f32,
    pub mean_abs: f64,
}

/// One text class of one tokenizer check.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub name: String,
    pub class: String,
    pub total: usize,
    pub mismatches: usize,
    /// Wall time of tokenising the class as one batch, per text.
    pub micros_per_text: f64,
    /// The first few mismatching texts, for the report.
    pub examples: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ModelRow {
    pub name: String,
    pub convention: Convention,
    pub device: String,
    pub dtype: String,
    /// What ran the vision tower (`torchscript`, `aoti`).
    pub backend: String,
    pub image_embeds_max: f32,
    pub text_embeds_max: f32,
    pub logits_max: f32,
    pub probs_max: f32,
    /// Range of the reference probabilities: a check is only meaningful when they spread.
    pub ref_probs_range: (f32, f32),
}

/// One region of one file, through the server's path (decode once, crop, preprocess) and the
/// fp32 model, against transformers on Pillow's crop.
#[derive(Debug, Clone)]
pub struct RegionRow {
    pub name: String,
    pub convention: Convention,
    pub file: String,
    /// The crop box.
    pub region: Region,
    pub pixels_max: f32,
    pub probs_max: f32,
}

#[derive(Debug, Default)]
pub struct Report {
    pub pixels: Vec<PixelRow>,
    pub tokens: Vec<TokenRow>,
    pub models: Vec<ModelRow>,
    pub regions: Vec<RegionRow>,
}

/// Runs every check of the suite at `path` on `device`.
pub fn run(path: &Path, device: DeviceChoice) -> Result<Report> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| Error::Model(format!("cannot read parity suite {}: {e}", path.display())))?;
    let suite: Suite =
        serde_json::from_str(&raw).map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut report = Report::default();
    for check in &suite.pixels {
        report.pixels.extend(check_pixels(base, check)?);
    }
    for check in &suite.tokens {
        report.tokens.extend(check_tokens(base, check)?);
    }
    for check in &suite.models {
        report
            .models
            .push(check_model(base, &check.check, device, check.dtype)?);
    }
    for check in &suite.regions {
        report.regions.extend(check_regions(base, check, device)?);
    }
    Ok(report)
}

fn read_reference(base: &Path, check: &Check) -> Result<(HashMap<String, Tensor>, Sidecar)> {
    let path = base.join(&check.reference);
    let tensors = Tensor::read_safetensors(&path)
        .map_err(|e| Error::Model(format!("cannot read reference {}: {e}", path.display())))?
        .into_iter()
        .collect();
    let sidecar_path = path.with_extension("json");
    let sidecar = std::fs::read_to_string(&sidecar_path)
        .map_err(|e| Error::Model(format!("cannot read {}: {e}", sidecar_path.display())))?;
    let sidecar = serde_json::from_str(&sidecar)
        .map_err(|e| Error::Model(format!("{}: {e}", sidecar_path.display())))?;
    Ok((tensors, sidecar))
}

fn tensor<'a>(tensors: &'a HashMap<String, Tensor>, name: &str) -> Result<&'a Tensor> {
    tensors
        .get(name)
        .ok_or_else(|| Error::Model(format!("reference lacks the tensor {name:?}")))
}

fn to_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(Vec::<f32>::try_from(
        &t.to_kind(tch::Kind::Float).contiguous().view(-1),
    )?)
}

/// Largest and mean absolute difference.
fn diff(a: &[f32], b: &[f32]) -> (f32, f64) {
    assert_eq!(a.len(), b.len(), "compared tensors differ in size");
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    (max, sum / a.len().max(1) as f64)
}

/// An image file as the server would receive it: encoded, or a raw RGBA8 frame named
/// `*_<W>x<H>.rgba`.
fn image_input(path: &Path) -> Result<ImageInput> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Model(format!("cannot read {}: {e}", path.display())))?;
    if path.extension().is_none_or(|e| e != "rgba") {
        return Ok(ImageInput::Encoded(bytes));
    }
    let (width, height) = path
        .file_stem()
        .and_then(|s| s.to_str()?.rsplit_once('_'))
        .and_then(|(_, dims)| dims.split_once('x'))
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .ok_or_else(|| {
            Error::Model(format!(
                "{}: expected a name ending in _WxH.rgba",
                path.display()
            ))
        })?;
    Ok(ImageInput::Raw {
        width,
        height,
        format: RawFormat::Rgba8,
        data: bytes,
    })
}

fn load_image(path: &Path, convention: Convention) -> Result<RgbImage> {
    image_input(path)?
        .decode(&ImageLimits::default(), convention)
        .map_err(|e| Error::Model(format!("{}: {e}", path.display())))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn check_pixels(base: &Path, check: &Check) -> Result<Vec<PixelRow>> {
    let (tensors, sidecar) = read_reference(base, check)?;
    let reference = tensor(&tensors, "pixel_values")?;
    let size = reference.size()[2] as u32;
    let manifest = Manifest::load(&base.join(&check.model_dir))?;
    let prep = manifest.image.preprocess(size);
    sidecar
        .images
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let rgb = load_image(&base.join(file), check.convention)?;
            let ours = crate::model::image::preprocess(&rgb, &prep);
            let (max_abs, mean_abs) = diff(&ours, &to_f32(&reference.get(i as i64))?);
            Ok(PixelRow {
                name: check.name.clone(),
                convention: check.convention,
                file: file_name(file),
                size,
                max_abs,
                mean_abs,
            })
        })
        .collect()
}

/// One row per text class, in the order the classes first appear; each class is tokenised as one
/// batch, and timed.
fn check_tokens(base: &Path, check: &Check) -> Result<Vec<TokenRow>> {
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

fn check_model(base: &Path, check: &Check, device: DeviceChoice, dtype: DType) -> Result<ModelRow> {
    let (tensors, sidecar) = read_reference(base, check)?;
    let model = load_model(base, check, device, dtype)?;
    let images = sidecar
        .images
        .iter()
        .map(|file| load_image(&base.join(file), check.convention))
        .collect::<Result<Vec<_>>>()?;
    let image_embeds = in_passes(&model, &images, |chunk| model.embed_images(chunk))?;
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
        name: check.name.clone(),
        convention: check.convention,
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
fn check_regions(base: &Path, check: &Check, device: DeviceChoice) -> Result<Vec<RegionRow>> {
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
        .preprocess(reference.size()[2] as u32);
    let mut rows: Vec<Vec<f32>> = Vec::with_capacity(sidecar.images.len());
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
    let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
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
                file: file_name(&sidecar.images[i]),
                region: sidecar.regions[i],
                pixels_max: diff(ours, &to_f32(&reference.get(i as i64))?).0,
                probs_max: diff(&probs[span.clone()], &ref_probs[span]).0,
            })
        })
        .collect()
}

impl Report {
    pub fn pixels_max(&self) -> f32 {
        self.pixels.iter().map(|r| r.max_abs).fold(0.0, f32::max)
    }

    /// Mean absolute difference over every pixel value checked.
    pub fn pixels_mean(&self) -> f64 {
        let n = self.pixels.len().max(1) as f64;
        self.pixels.iter().map(|r| r.mean_abs).sum::<f64>() / n
    }

    pub fn token_counts(&self) -> (usize, usize) {
        self.tokens
            .iter()
            .fold((0, 0), |(m, t), r| (m + r.mismatches, t + r.total))
    }

    /// The float32 rows: the ones the parity thresholds apply to.
    pub fn fp32_models(&self) -> impl Iterator<Item = &ModelRow> {
        self.models.iter().filter(|r| r.dtype == "float32")
    }

    pub fn regions_pixels_max(&self) -> f32 {
        self.regions
            .iter()
            .map(|r| r.pixels_max)
            .fold(0.0, f32::max)
    }

    pub fn regions_probs_max(&self) -> f32 {
        self.regions.iter().map(|r| r.probs_max).fold(0.0, f32::max)
    }

    /// The one-line summary `make parity` ends with (the region figures come last, so that the
    /// fields before them keep their places).
    pub fn summary(&self) -> String {
        let (mismatches, total) = self.token_counts();
        let logits = self.fp32_models().map(|r| r.logits_max).fold(0.0, f32::max);
        let probs = self.fp32_models().map(|r| r.probs_max).fold(0.0, f32::max);
        format!(
            "parity: pixels_max={:.6} pixels_mean={:.3e} token_mismatches={mismatches}/{total} \
             logits_max={logits:.3e} probs_max={probs:.3e} regions_pixels_max={:.6} \
             regions_probs_max={:.3e}",
            self.pixels_max(),
            self.pixels_mean(),
            self.regions_pixels_max(),
            self.regions_probs_max()
        )
    }

    /// The human-readable table, without the summary line.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "pixel values vs SiglipImageProcessorPil");
        let _ = writeln!(
            s,
            "  {:<14} {:<10} {:<40} {:>10} {:>10}",
            "filter-size", "convention", "file", "max_abs", "mean_abs"
        );
        for r in &self.pixels {
            let _ = writeln!(
                s,
                "  {:<14} {:<10} {:<40} {:>10.6} {:>10.3e}",
                r.name, r.convention, r.file, r.max_abs, r.mean_abs
            );
        }
        let _ = writeln!(
            s,
            "\ninput ids vs transformers' tokenizer (padding=max_length, 64), mismatches by class"
        );
        let _ = writeln!(
            s,
            "  {:<14} {:<24} {:>11} {:>9}",
            "tokenizer", "class", "mismatches", "µs/text"
        );
        for r in &self.tokens {
            let _ = writeln!(
                s,
                "  {:<14} {:<24} {:>5}/{:<5} {:>9.1}",
                r.name, r.class, r.mismatches, r.total, r.micros_per_text
            );
            for e in &r.examples {
                let _ = writeln!(s, "      e.g. {e}");
            }
        }
        let _ = writeln!(s, "\nend to end vs transformers SiglipModel (fp32, CPU)");
        let _ = writeln!(
            s,
            "  {:<12} {:<10} {:<7} {:<9} {:<11} {:>10} {:>10} {:>10} {:>10} {:>14}",
            "model",
            "convention",
            "device",
            "dtype",
            "vision",
            "img_emb",
            "txt_emb",
            "logits",
            "probs",
            "ref probs"
        );
        for r in &self.models {
            let _ = writeln!(
                s,
                "  {:<12} {:<10} {:<7} {:<9} {:<11} {:>10.3e} {:>10.3e} {:>10.3e} {:>10.3e} {:>6.3}–{:<6.3}",
                r.name,
                r.convention,
                r.device,
                r.dtype,
                r.backend,
                r.image_embeds_max,
                r.text_embeds_max,
                r.logits_max,
                r.probs_max,
                r.ref_probs_range.0,
                r.ref_probs_range.1
            );
        }
        let _ = writeln!(
            s,
            "\nregions vs transformers on Pillow's crop (numpy slice for raw frames), fp32"
        );
        let _ = writeln!(
            s,
            "  {:<6} {:<10} {:<34} {:<22} {:>10} {:>10}",
            "model", "convention", "file", "box", "pixels", "probs"
        );
        for r in &self.regions {
            let _ = writeln!(
                s,
                "  {:<6} {:<10} {:<34} {:<22} {:>10.6} {:>10.3e}",
                r.name,
                r.convention,
                r.file,
                r.region.to_string(),
                r.pixels_max,
                r.probs_max
            );
        }
        s
    }
}
