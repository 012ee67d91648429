//! Parity with the reference implementation: compares this crate's preprocessing, tokenizer and
//! model runtime against what transformers computed for the same files and texts.
//!
//! The reference files come from `python -m siglip_export reference*` (run, never typed in); a
//! *suite* file lists them. `siglip-serve parity --suite FILE` prints the table, and
//! `tests/parity.rs` asserts the thresholds on the same [`Report`].

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::{
    image::{self, ImageLimits},
    manifest::Manifest,
    runtime::{device_name, DType, DTypeChoice, DeviceChoice},
    scores::sigmoid,
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
    /// Texts of classes documented as not matchable; reported, not counted.
    #[serde(default)]
    pub tokens_known_hard: Vec<Check>,
    /// Embeddings, logits and probabilities end to end, per exported dtype.
    pub models: Vec<ModelCheck>,
}

#[derive(Debug, Deserialize)]
pub struct Check {
    pub name: String,
    pub reference: PathBuf,
    pub model_dir: PathBuf,
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
}

#[derive(Debug, Clone)]
pub struct PixelRow {
    pub name: String,
    pub file: String,
    pub size: u32,
    pub max_abs: f32,
    pub mean_abs: f64,
}

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub name: String,
    pub total: usize,
    pub mismatches: usize,
    /// Mismatches that are equal-score segmentation ties: the same pieces in another order with
    /// the same total score, which sentencepiece (float32 path scores) and `tokenizers`
    /// (float64) break differently.
    pub ties: usize,
    /// The first few mismatching texts, for the report.
    pub examples: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ModelRow {
    pub name: String,
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

#[derive(Debug, Default)]
pub struct Report {
    pub pixels: Vec<PixelRow>,
    pub tokens: Vec<TokenRow>,
    pub tokens_known_hard: Vec<TokenRow>,
    pub models: Vec<ModelRow>,
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
        report.tokens.push(check_tokens(base, check)?);
    }
    for check in &suite.tokens_known_hard {
        report.tokens_known_hard.push(check_tokens(base, check)?);
    }
    for check in &suite.models {
        report
            .models
            .push(check_model(base, &check.check, device, check.dtype)?);
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

fn check_pixels(base: &Path, check: &Check) -> Result<Vec<PixelRow>> {
    let (tensors, sidecar) = read_reference(base, check)?;
    let reference = tensor(&tensors, "pixel_values")?;
    let size = reference.size()[2] as u32;
    let manifest = Manifest::load(&base.join(&check.model_dir))?;
    let prep = manifest.image.preprocess(size);
    let limits = ImageLimits::default();
    sidecar
        .images
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let path = base.join(file);
            let bytes = std::fs::read(&path)
                .map_err(|e| Error::Model(format!("cannot read {}: {e}", path.display())))?;
            let rgb = image::decode(&bytes, &limits)
                .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
            let ours = image::preprocess(&rgb, &prep);
            let (max_abs, mean_abs) = diff(&ours, &to_f32(&reference.get(i as i64))?);
            Ok(PixelRow {
                name: check.name.clone(),
                file: file
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                size,
                max_abs,
                mean_abs,
            })
        })
        .collect()
}

fn check_tokens(base: &Path, check: &Check) -> Result<TokenRow> {
    let (tensors, sidecar) = read_reference(base, check)?;
    let reference = tensor(&tensors, "input_ids")?;
    let manifest = Manifest::load(&base.join(&check.model_dir))?;
    let tokenizer = TextTokenizer::load(
        &base.join(&check.model_dir).join(&manifest.files.tokenizer),
        &manifest.text,
    )?;
    let ours = tokenizer.encode(&sidecar.texts)?;
    let scores = piece_scores(&base.join(&check.model_dir).join(&manifest.files.tokenizer))?;
    let mut row = TokenRow {
        name: check.name.clone(),
        total: sidecar.texts.len(),
        mismatches: 0,
        ties: 0,
        examples: Vec::new(),
    };
    for (i, (text, got)) in sidecar.texts.iter().zip(&ours).enumerate() {
        let expected = Vec::<i64>::try_from(&reference.get(i as i64))?;
        if expected != got.ids {
            row.mismatches += 1;
            if is_tie(&expected, &got.ids, &scores) {
                row.ties += 1;
            }
            if row.examples.len() < 5 {
                row.examples.push(format!("{text:?}"));
            }
        }
    }
    Ok(row)
}

/// The Unigram score of every piece, by id, from `tokenizer.json`; empty for other models (BPE
/// has no scores, so no ties).
fn piece_scores(path: &Path) -> Result<Vec<f64>> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| Error::Model(format!("cannot read {}: {e}", path.display())))?;
    let file: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
    let vocab = file["model"]["vocab"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(vocab
        .iter()
        .map(|piece| piece[1].as_f64().unwrap_or(f64::NAN))
        .collect())
}

/// Same pieces, same total score: only the tie-break differs.
fn is_tie(a: &[i64], b: &[i64], scores: &[f64]) -> bool {
    let (mut x, mut y) = (a.to_vec(), b.to_vec());
    x.sort_unstable();
    y.sort_unstable();
    let total = |ids: &[i64]| -> f64 {
        ids.iter()
            .map(|&id| scores.get(id as usize).copied().unwrap_or(f64::NAN))
            .sum()
    };
    x == y && (total(a) - total(b)).abs() < 1e-6
}

fn check_model(base: &Path, check: &Check, device: DeviceChoice, dtype: DType) -> Result<ModelRow> {
    let (tensors, sidecar) = read_reference(base, check)?;
    let model = Model::load(&LoadOptions {
        device,
        dtype: DTypeChoice::Fixed(dtype),
        warmup_rounds: 1,
        ..LoadOptions::new(base.join(&check.model_dir))
    })?;
    let limits = ImageLimits::default();
    let images = sidecar
        .images
        .iter()
        .map(|file| {
            let bytes = std::fs::read(base.join(file))
                .map_err(|e| Error::Model(format!("cannot read {}: {e}", file.display())))?;
            Ok(image::decode(&bytes, &limits)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let image_embeds = model.embed_images(&images)?;
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

    /// The one-line summary `make parity` ends with.
    pub fn summary(&self) -> String {
        let (mismatches, total) = self.token_counts();
        let logits = self.fp32_models().map(|r| r.logits_max).fold(0.0, f32::max);
        let probs = self.fp32_models().map(|r| r.probs_max).fold(0.0, f32::max);
        format!(
            "parity: pixels_max={:.6} pixels_mean={:.3e} token_mismatches={mismatches}/{total} \
             logits_max={logits:.3e} probs_max={probs:.3e}",
            self.pixels_max(),
            self.pixels_mean()
        )
    }

    /// The human-readable table, without the summary line.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "pixel values vs SiglipImageProcessorPil");
        let _ = writeln!(
            s,
            "  {:<20} {:<36} {:>10} {:>10}",
            "check (filter-size)", "file", "max_abs", "mean_abs"
        );
        for r in &self.pixels {
            let _ = writeln!(
                s,
                "  {:<20} {:<36} {:>10.6} {:>10.3e}",
                r.name, r.file, r.max_abs, r.mean_abs
            );
        }
        let _ = writeln!(
            s,
            "\ninput ids vs transformers' tokenizer (padding=max_length, 64)"
        );
        for r in self.tokens.iter().chain(&self.tokens_known_hard) {
            let _ = writeln!(
                s,
                "  {:<40} {:>5}/{:<5} mismatches ({} equal-score ties)",
                r.name, r.mismatches, r.total, r.ties
            );
            for e in &r.examples {
                let _ = writeln!(s, "      e.g. {e}");
            }
        }
        let _ = writeln!(s, "\nend to end vs transformers SiglipModel (fp32, CPU)");
        let _ = writeln!(
            s,
            "  {:<12} {:<7} {:<9} {:<11} {:>10} {:>10} {:>10} {:>10} {:>14}",
            "model",
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
                "  {:<12} {:<7} {:<9} {:<11} {:>10.3e} {:>10.3e} {:>10.3e} {:>10.3e} {:>6.3}–{:<6.3}",
                r.name,
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
        s
    }
}
