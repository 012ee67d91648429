//! `manifest.json`: what the export tool wrote about a model directory.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;

use super::device::DType;
use super::image::{Filter, ImageProcessor, Patches, Preprocess, Transparency};
use crate::error::{Error, Result};

/// The only manifest layout this server reads; the export tool writes the same number.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub model_id: String,
    pub architecture: String,
    pub source: Source,
    pub image: ImageSpec,
    pub text: TextSpec,
    pub embedding_dim: usize,
    /// Raw parameter: the logits are scaled by `exp(logit_scale)`.
    pub logit_scale: f32,
    pub logit_bias: f32,
    pub files: Files,
    /// The traced towers by dtype name (`float32`, `float16`, `bfloat16`): each dtype is traced
    /// separately, since a trace records the cast of the pixels to the weights' dtype.
    pub towers: BTreeMap<String, TowerFiles>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Source {
    pub checkpoint: String,
    pub revision: Option<String>,
    pub random_weights: bool,
    pub shape: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ImageSpec {
    /// Side of the square every image is resized to; absent (0) for a NaFlex model, which keeps
    /// each image's aspect ratio (`naflex`).
    #[serde(default)]
    pub size: u32,
    /// `bicubic` or `bilinear`; any other filter fails to load, naming the two.
    pub resample: Filter,
    pub rescale_factor: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// SigLIP 2 NaFlex: images become patches on a grid of their own aspect ratio.
    #[serde(default)]
    pub naflex: Option<NaflexSpec>,
}

/// How a SigLIP 2 NaFlex model takes images (`Siglip2ImageProcessorPil`): resized, keeping their
/// aspect ratio, to at most M patches of `patch_size`² pixels, M one of `max_num_patches`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct NaflexSpec {
    pub patch_size: u32,
    /// The patch budgets M the model was checked at, ascending.
    pub max_num_patches: Vec<u32>,
    /// The budget a request that names none gets (the processor's own default).
    pub default_max_num_patches: u32,
}

impl ImageSpec {
    /// The preprocessing these settings describe, at `size` (the model's own, or another for
    /// parity checks), with `processor`'s arithmetic; a NaFlex model's at its default budget.
    pub fn preprocess(&self, size: u32, processor: ImageProcessor) -> Preprocess {
        let patches = self.naflex.as_ref().map(|n| Patches {
            size: n.patch_size,
            budget: n.default_max_num_patches,
        });
        Preprocess {
            size,
            patches,
            filter: self.resample,
            rescale: self.rescale_factor,
            mean: self.mean,
            std: self.std,
            processor,
            // NaFlex's processor leaves `do_convert_rgb` unset; SigLIP's sets it.
            transparency: match patches {
                None => Transparency::Composite,
                Some(_) => Transparency::Drop,
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextSpec {
    pub max_length: usize,
    pub pad_id: u32,
    pub eos_id: u32,
    pub lowercase: bool,
    pub tokenizer: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Files {
    /// `tokenizer.json`, or for SigLIP v1 the sentencepiece model (`spiece.model`).
    pub tokenizer: String,
    /// SigLIP v1: what the slow Python tokenizer adds around sentencepiece
    /// (`slow_tokenizer.json`).
    #[serde(default)]
    pub slow_tokenizer: Option<String>,
    /// Sample texts with transformers' ids, re-tokenised at every load
    /// (`tokenizer_check.json`).
    pub tokenizer_check: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TowerFiles {
    pub vision: String,
    pub text: String,
    /// AOTInductor packages of the vision tower by device kind (`cpu`, `cuda`), added by
    /// `python -m siglip_export compile`.
    #[serde(default)]
    pub compiled_vision: BTreeMap<String, CompiledTower>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompiledTower {
    pub file: String,
    /// Largest batch the package was compiled for.
    pub max_batch: usize,
}

impl Manifest {
    /// Reads and checks `<dir>/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        let raw = std::fs::read_to_string(&path).map_err(|e| {
            Error::Model(format!(
                "cannot read {}: {e} (is {} a directory written by `python -m siglip_export`?)",
                path.display(),
                dir.display()
            ))
        })?;
        // The version first: another layout would otherwise fail on whichever key it lacks.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let parse_error = |e: serde_json::Error| Error::Model(format!("{}: {e}", path.display()));
        let version: Version = serde_json::from_str(&raw).map_err(parse_error)?;
        if version.format_version != FORMAT_VERSION {
            return Err(Error::Model(format!(
                "{}: format_version {} is not supported (this server reads {FORMAT_VERSION}); re-export the model",
                path.display(),
                version.format_version
            )));
        }
        let manifest: Manifest = serde_json::from_str(&raw).map_err(parse_error)?;
        manifest.validate(&path)?;
        Ok(manifest)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |what: String| Err(Error::Model(format!("{}: {what}", path.display())));
        if self.embedding_dim == 0 || self.text.max_length == 0 {
            return bad("embedding_dim and text max_length must be positive".into());
        }
        match &self.image.naflex {
            None if self.image.size == 0 => return bad("image size must be positive".into()),
            None => {}
            Some(naflex) => {
                if naflex.patch_size == 0 || naflex.max_num_patches.contains(&0) {
                    return bad("NaFlex patch_size and max_num_patches must be positive".into());
                }
                if !naflex.max_num_patches.is_sorted_by(|a, b| a < b) {
                    return bad(format!(
                        "NaFlex max_num_patches {:?} must be ascending, each once",
                        naflex.max_num_patches
                    ));
                }
                if !naflex
                    .max_num_patches
                    .contains(&naflex.default_max_num_patches)
                {
                    return bad(format!(
                        "NaFlex default_max_num_patches {} is not among max_num_patches {:?}",
                        naflex.default_max_num_patches, naflex.max_num_patches
                    ));
                }
            }
        }
        if self.image.std.contains(&0.0) {
            return bad("image std must not contain zeros".into());
        }
        if self.towers.is_empty() {
            return bad("no towers listed".into());
        }
        if let Some(name) = self.towers.keys().find(|k| k.parse::<DType>().is_err()) {
            return bad(format!("unknown tower dtype {name:?}"));
        }
        Ok(())
    }

    /// The dtypes this directory holds towers for.
    pub fn dtypes(&self) -> Vec<DType> {
        self.towers.keys().filter_map(|k| k.parse().ok()).collect()
    }

    /// The towers in `dtype`, or an error that says how to get them.
    pub fn towers(&self, dtype: DType) -> Result<&TowerFiles> {
        self.towers.get(dtype.name()).ok_or_else(|| {
            let have: Vec<&str> = self.towers.keys().map(String::as_str).collect();
            Error::Model(format!(
                "the model was exported in {} only, not {dtype}: re-export with `--dtype {},{dtype}`",
                have.join(", "),
                have.join(",")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory exported before the SigLIP tokenizer port (format 1: a tokenizer.json, no
    /// start-up check) is refused with what to do, not with a missing-key parse error.
    #[test]
    fn an_older_layout_is_refused_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("siglip-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = r#"{"format_version": 1, "files": {"tokenizer": "tokenizer.json"}}"#;
        std::fs::write(dir.join("manifest.json"), old).unwrap();
        let err = Manifest::load(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains("format_version 1 is not supported") && err.contains("re-export"),
            "{err}"
        );
    }
}
