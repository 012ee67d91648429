//! What is on disk: the model folders of a repository, each with its manifest and, optionally,
//! a `serve.json` beside it that overrides the server's flags for that model, and a fingerprint
//! of both that tells a changed model from the one loaded.
//!
//! `serve.json` (every key optional; an unknown key or value refuses the model):
//!
//! ```json
//! { "device": "cuda:1", "dtype": "bfloat16", "backend": "aoti", "image_processor": "torchvision" }
//! ```
//!
//! The values are those of `--device`, `--dtype`, `--backend` and `--image-processor`.

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::model::{
    device::{BackendChoice, DTypeChoice, DeviceChoice},
    image::ImageProcessor,
    manifest::Manifest,
    LoadOptions,
};

/// The file beside a model's manifest that overrides the server's flags for it.
pub const OVERRIDES_FILE: &str = "serve.json";
const MANIFEST: &str = "manifest.json";

/// One model folder as found on disk.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The folder's name: the model's name in requests.
    pub name: String,
    pub dir: PathBuf,
    /// Changes when the manifest or `serve.json` changes (content or modification time).
    pub fingerprint: u64,
}

/// A model's `serve.json`, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Overrides {
    device: Option<String>,
    dtype: Option<String>,
    backend: Option<String>,
    image_processor: Option<String>,
}

impl ModelSource {
    /// The one model of `--model-dir`, named after its folder.
    pub fn single(dir: &Path) -> Result<Self> {
        // The name as given: a link `current` → `v2` serves a model named `current`. A path
        // that ends in `.` or `..` is named after the directory it resolves to.
        let name = dir
            .file_name()
            .map(std::ffi::OsStr::to_os_string)
            .or_else(|| Some(dir.canonicalize().ok()?.file_name()?.to_os_string()))
            .filter(|_| dir.is_dir())
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                Error::Model(format!(
                    "--model-dir {}: not a directory that exists",
                    dir.display()
                ))
            })?;
        Ok(Self {
            fingerprint: fingerprint(dir),
            name,
            dir: dir.to_path_buf(),
        })
    }

    /// How to load this model: `defaults` (the flags), overridden by its `serve.json`.
    pub fn load_options(&self, defaults: &LoadOptions) -> Result<LoadOptions> {
        let mut options = LoadOptions {
            dir: self.dir.clone(),
            ..defaults.clone()
        };
        let path = self.dir.join(OVERRIDES_FILE);
        let raw = match std::fs::read_to_string(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(options),
            Err(e) => return Err(Error::Model(format!("cannot read {}: {e}", path.display()))),
        };
        let bad = |what: String| Error::Model(format!("{}: {what}", path.display()));
        let file: Overrides = serde_json::from_str(&raw).map_err(|e| bad(e.to_string()))?;
        if let Some(device) = file.device {
            options.device = device.parse::<DeviceChoice>().map_err(bad)?;
        }
        if let Some(dtype) = file.dtype {
            options.dtype = dtype.parse::<DTypeChoice>().map_err(bad)?;
        }
        if let Some(backend) = file.backend {
            options.backend = backend.parse::<BackendChoice>().map_err(bad)?;
        }
        if let Some(processor) = file.image_processor {
            options.image_processor = processor.parse::<ImageProcessor>().map_err(bad)?;
        }
        Ok(options)
    }

    /// Bytes the model's towers take on disk in the dtype `options` resolve to: what its
    /// parameters will take on the device, known before loading it (`--max-model-bytes`).
    pub fn expected_bytes(&self, options: &LoadOptions) -> Result<u64> {
        let manifest = Manifest::load(&self.dir)?;
        let device = options.device.resolve()?;
        let dtype = options.dtype.resolve(device, &manifest.dtypes());
        let files = manifest.towers(dtype)?;
        let size = |file: &str| std::fs::metadata(self.dir.join(file)).map_or(0, |m| m.len());
        Ok(size(&files.vision) + size(&files.text))
    }
}

/// The model folders of `repository`: every sub-folder (or link to one) with a manifest, by
/// name. Other entries are skipped, those whose name starts with a dot (a copy being written)
/// included.
pub fn scan(repository: &Path) -> Result<BTreeMap<String, ModelSource>> {
    let entries = std::fs::read_dir(repository).map_err(|e| {
        Error::Model(format!(
            "cannot read the model repository {}: {e}",
            repository.display()
        ))
    })?;
    let mut models = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        if name.starts_with('.') || !dir.join(MANIFEST).is_file() {
            continue;
        }
        models.insert(
            name.clone(),
            ModelSource {
                fingerprint: fingerprint(&dir),
                name,
                dir,
            },
        );
    }
    Ok(models)
}

/// A hash of the manifest's and `serve.json`'s content and modification times (0 for a file
/// that cannot be read).
fn fingerprint(dir: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    for file in [MANIFEST, OVERRIDES_FILE] {
        let path = dir.join(file);
        std::fs::read(&path).ok().hash(&mut hasher);
        std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overrides_file_is_checked_key_by_key() {
        let dir = std::env::temp_dir().join(format!("siglip-overrides-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = ModelSource {
            name: "m".into(),
            dir: dir.clone(),
            fingerprint: 0,
        };
        let args = LoadOptions::new("elsewhere".into());
        let defaults = source.load_options(&args).unwrap();
        assert_eq!(defaults.dir, dir);
        assert_eq!(defaults.device, DeviceChoice::Auto);

        std::fs::write(
            dir.join(OVERRIDES_FILE),
            r#"{"device": "cpu", "dtype": "float32", "image_processor": "torchvision"}"#,
        )
        .unwrap();
        let options = source.load_options(&args).unwrap();
        assert_eq!(options.device, DeviceChoice::Cpu);
        assert_eq!(
            options.dtype,
            DTypeChoice::Fixed(crate::model::device::DType::Float32)
        );
        assert_eq!(options.image_processor, ImageProcessor::Torchvision);
        assert_eq!(options.backend, BackendChoice::Auto);

        for (bad, says) in [
            (r#"{"devcie": "cpu"}"#, "unknown field `devcie`"),
            (r#"{"device": "tpu"}"#, "unknown device \"tpu\""),
            (r#"{"dtype": 16}"#, "invalid type"),
        ] {
            std::fs::write(dir.join(OVERRIDES_FILE), bad).unwrap();
            let err = source.load_options(&args).unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains(OVERRIDES_FILE),
                "{bad}: {err}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
