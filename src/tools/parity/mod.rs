//! Parity with the reference implementation: compares this crate's preprocessing, tokenizer and
//! model runtime against what transformers computed for the same files and texts, and a stream's
//! regions against transformers on Pillow's crop of the same file.
//!
//! The reference files come from `python -m siglip_export reference*` and
//! `python/make_parity_suite.py` (run, never typed in); a
//! *suite* file lists them. `siglip-serve parity --suite FILE` prints the table, and
//! `tests/parity.rs` asserts the thresholds on the same [`Report`]. The checks are in `checks`,
//! the rows and their table in `report`.

mod checks;
mod report;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use clap::Args;
use serde::Deserialize;
use tch::Tensor;

use crate::error::{Error, Result};
use crate::infer::ImageInput;
use crate::model::{
    device::{DType, DeviceChoice},
    image::{Convention, ImageLimits, ImageProcessor, Preprocess, RawFormat, Region, RgbImage},
};
pub use report::{ModelRow, NaflexRow, PixelRow, RegionRow, Report, TokenRow};

/// `siglip-serve parity`'s flags.
#[derive(Debug, Clone, Args)]
pub struct ParityArgs {
    /// Suite file listing the references (see `make parity`).
    #[arg(long)]
    pub suite: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
}

/// `suite.json`: which references to check against which model directories. Paths are relative
/// to the suite file.
#[derive(Debug, Deserialize)]
pub struct Suite {
    /// Pixel values for many image files; preprocessing constants come from `model_dir`.
    pub pixels: Vec<Check>,
    /// A NaFlex model's patches, patch masks and grids for many image files, at one patch budget.
    #[serde(default)]
    pub naflex_pixels: Vec<NaflexCheck>,
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
    /// How the reference turned images into RGB (pixel, model and region checks).
    #[serde(default)]
    pub convention: Convention,
    /// Which backend of the image processor wrote the reference's pixels.
    #[serde(default)]
    pub processor: ImageProcessor,
}

#[derive(Debug, Deserialize)]
pub struct NaflexCheck {
    #[serde(flatten)]
    pub check: Check,
    pub max_num_patches: u32,
}

#[derive(Debug, Deserialize)]
pub struct ModelCheck {
    #[serde(flatten)]
    pub check: Check,
    pub dtype: DType,
    /// A NaFlex model's patch budget (its default when absent).
    #[serde(default)]
    pub max_num_patches: Option<u32>,
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

/// `siglip-serve parity`: runs the suite and prints the table, then the summary line.
pub fn command(args: &ParityArgs) -> anyhow::Result<()> {
    let report = run(&args.suite, args.device)?;
    print!("{}", report.table());
    println!("{}", report.summary());
    Ok(())
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
        report.pixels.extend(checks::pixels(base, check)?);
    }
    for check in &suite.naflex_pixels {
        report.naflex.extend(checks::naflex_pixels(base, check)?);
    }
    for check in &suite.tokens {
        report.tokens.extend(checks::tokens(base, check)?);
    }
    for check in &suite.models {
        report.models.push(checks::model(
            base,
            &check.check,
            device,
            check.dtype,
            check.max_num_patches,
        )?);
    }
    for check in &suite.regions {
        report.regions.extend(checks::regions(base, check, device)?);
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

fn load_image(path: &Path, check: &Check, prep: &Preprocess) -> Result<RgbImage> {
    image_input(path)?
        .decode(&ImageLimits::default(), check.convention, prep)
        .map_err(|e| Error::Model(format!("{}: {e}", path.display())))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}
