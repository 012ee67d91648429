//! The model: a directory written by the export tool (manifest, two TorchScript towers and a
//! tokenizer), preprocessing that reproduces transformers, and the libtorch runtime.

mod aoti;
pub mod device;
pub mod image;
pub mod manifest;
pub mod runtime;
pub mod scores;
pub mod tokenizer;

use std::{path::PathBuf, sync::Arc};

use tch::Device;

use self::device::{device_name, BackendChoice, DType, DTypeChoice, DeviceChoice};
use self::image::{ImageProcessor, Pixels, Preprocess};
use self::manifest::Manifest;
use self::runtime::{RunOptions, Towers};
use self::scores::{Embeddings, LogitHead};
use self::tokenizer::{TextTokenizer, TokenIds};
use crate::error::{Error, Result};

/// How to load a model directory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dir: PathBuf,
    pub device: DeviceChoice,
    pub dtype: DTypeChoice,
    /// Forward passes per tower and batch size before the model is reported ready
    /// (TorchScript's profiling executor makes the first calls much slower).
    pub warmup_rounds: usize,
    /// The most images the caller puts in one pass: on CUDA, warm-up covers every batch size up
    /// to it, and page-locked host buffers are sized for it.
    pub largest_batch: usize,
    /// What runs the vision tower; see `--backend`.
    pub backend: BackendChoice,
    /// TorchScript's optimising (profiling, fusing) executor; see `--jit-optimize`.
    pub jit_optimize: bool,
    /// libtorch's intra-op threads (0: its default, one per core). Set by [`Model::load`] on the
    /// thread it runs on: OpenMP keeps the count per thread, so load the model on the thread that
    /// will run it.
    pub threads: usize,
    /// Whose pixel arithmetic preprocessing follows (`--image-processor`).
    pub image_processor: ImageProcessor,
}

impl LoadOptions {
    /// Warm-up passes per tower and batch size (`--warmup-rounds`).
    pub const DEFAULT_WARMUP_ROUNDS: usize = 2;
    /// Images per forward pass (the server's `--max-batch-size`).
    pub const DEFAULT_LARGEST_BATCH: usize = 16;

    /// `dir` with the command line's defaults: automatic device, dtype and backend, two warm-up
    /// rounds up to the server's default batch size, the optimising executor.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            device: DeviceChoice::Auto,
            dtype: DTypeChoice::Auto,
            warmup_rounds: Self::DEFAULT_WARMUP_ROUNDS,
            largest_batch: Self::DEFAULT_LARGEST_BATCH,
            backend: BackendChoice::Auto,
            jit_optimize: true,
            threads: 0,
            image_processor: ImageProcessor::Pil,
        }
    }
}

/// What the core needs of a model besides its towers, all of it on the host and cheap to share:
/// the manifest, the tokenizer, image preprocessing and the logit head. Taken before the model
/// moves to the inference thread.
#[derive(Clone)]
pub struct HostSide {
    pub manifest: Manifest,
    pub tokenizer: Arc<TextTokenizer>,
    pub preprocess: Preprocess,
    pub head: LogitHead,
}

/// A loaded, warmed-up SigLIP model. Blocking: use it from a dedicated thread.
pub struct Model {
    manifest: Manifest,
    tokenizer: Arc<TextTokenizer>,
    towers: Towers,
    preprocess: Preprocess,
    head: LogitHead,
}

impl Model {
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        if opts.threads > 0 {
            tch::set_num_threads(opts.threads as i32);
        }
        let manifest = Manifest::load(&opts.dir)?;
        let device = opts.device.resolve()?;
        let dtype = opts.dtype.resolve(device, &manifest.dtypes());
        let files = manifest.towers(dtype)?;
        let tokenizer = Arc::new(TextTokenizer::load(
            &opts.dir,
            &manifest.files,
            &manifest.text,
        )?);
        let preprocess = manifest
            .image
            .preprocess(manifest.image.size, opts.image_processor);
        let largest_image = match &manifest.image.naflex {
            None => preprocess.values_per_image(),
            Some(spec) => {
                if opts.image_processor != ImageProcessor::Pil {
                    return Err(Error::Model(format!(
                        "{}: a SigLIP 2 NaFlex model is served with --image-processor pil only \
                         (Siglip2ImageProcessorPil, the backend its parity is checked against)",
                        opts.dir.display()
                    )));
                }
                let largest = spec.max_num_patches.iter().max().copied().unwrap_or(0);
                preprocess.with_budget(largest).values_per_image()
            }
        };
        let towers = Towers::load(
            &opts.dir,
            files,
            device,
            dtype,
            RunOptions {
                backend: opts.backend,
                jit_optimize: opts.jit_optimize,
                largest_batch: opts.largest_batch,
                largest_image,
            },
        )?;
        if preprocess.patches.is_some() && towers.backend() != "torchscript" {
            return Err(Error::Model(format!(
                "{}: a compiled vision tower takes square images; a SigLIP 2 NaFlex model runs \
                 its TorchScript tower (--backend torchscript)",
                opts.dir.display()
            )));
        }
        let head = LogitHead::new(manifest.logit_scale, manifest.logit_bias);
        let model = Self {
            manifest,
            tokenizer,
            towers,
            preprocess,
            head,
        };
        model.warm_up(opts.warmup_rounds, opts.largest_batch)?;
        Ok(model)
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn device(&self) -> Device {
        self.towers.device()
    }

    pub fn dtype(&self) -> DType {
        self.towers.dtype()
    }

    /// `torchscript` or `aoti`: what runs the vision tower.
    pub fn backend(&self) -> &'static str {
        self.towers.backend()
    }

    /// Where and how this model runs, as GetModelInfo and the logs report it.
    pub fn running_on(&self) -> RunningOn {
        RunningOn {
            device: device_name(self.device()),
            dtype: self.dtype(),
            backend: self.backend(),
            parameter_bytes: self.towers.parameter_bytes(),
        }
    }

    /// The most images one vision pass accepts, where the backend has a limit.
    pub fn max_batch(&self) -> Option<usize> {
        self.towers.max_batch()
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    pub fn head(&self) -> LogitHead {
        self.head
    }

    /// The tokenizer, shareable with threads that do not own the model.
    pub fn tokenizer(&self) -> Arc<TextTokenizer> {
        Arc::clone(&self.tokenizer)
    }

    pub fn host_side(&self) -> HostSide {
        HostSide {
            manifest: self.manifest.clone(),
            tokenizer: self.tokenizer(),
            preprocess: self.preprocess,
            head: self.head,
        }
    }

    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<TokenIds>> {
        self.tokenizer.encode(texts)
    }

    /// Embeds `n` images of a square model already preprocessed into CHW floats, back to back.
    pub fn embed_pixels(&self, pixels: &[f32], n: usize) -> Result<Embeddings> {
        let per_image = self.preprocess.values_per_image();
        if self.preprocess.patches.is_some() || pixels.len() != n * per_image {
            return Err(Error::InvalidArgument(format!(
                "{} values are not {n} square images of {per_image}",
                pixels.len()
            )));
        }
        let rows: Vec<Pixels> = pixels
            .chunks_exact(per_image.max(1))
            .map(|values| values.to_vec().into())
            .collect();
        self.embed_rows(&rows.iter().collect::<Vec<_>>())
    }

    /// Embeds preprocessed images ([`image::preprocess`]).
    pub fn embed_rows(&self, rows: &[&Pixels]) -> Result<Embeddings> {
        let staged = self.stage_rows(rows)?;
        let submitted = self.submit(staged)?;
        self.finish(submitted)
    }

    /// The three steps of [`Model::embed_rows`], for a caller that overlaps them across passes:
    /// copy the rows into host memory for the device (host work only)…
    ///
    /// The rows of one pass share a shape: a NaFlex model's rows one patch budget M (one the
    /// manifest allows), each with its grid.
    pub fn stage_rows(&self, rows: &[&Pixels]) -> Result<Staged> {
        let Some(first) = rows.first() else {
            return Err(Error::InvalidArgument("no images given".into()));
        };
        let dims = self.dims(first.values.len())?;
        let naflex = self.preprocess.patches.is_some();
        if let Some(i) = rows
            .iter()
            .position(|row| row.values.len() != first.values.len() || row.grid.is_some() != naflex)
        {
            return Err(Error::InvalidArgument(format!(
                "image {i} of a pass differs from the first in size or kind ({} values, grid {:?})",
                rows[i].values.len(),
                rows[i].grid
            )));
        }
        Ok(Staged {
            images: self.towers.stage_images(rows, &dims)?,
            n: rows.len(),
        })
    }

    /// The shape of one image of `values` floats: `[3, size, size]`, or for a NaFlex model
    /// `[M, 3·P²]` with M one of the manifest's budgets.
    fn dims(&self, values: usize) -> Result<Vec<i64>> {
        let dims = match (self.preprocess.patches, &self.manifest.image.naflex) {
            (Some(patches), Some(spec)) => {
                let per_patch = 3 * (patches.size as usize).pow(2);
                let budget = values / per_patch;
                let allowed = values.is_multiple_of(per_patch)
                    && spec.max_num_patches.iter().any(|&m| m as usize == budget);
                allowed.then(|| vec![budget as i64, per_patch as i64])
            }
            _ => (values == self.preprocess.values_per_image()).then(|| self.preprocess.dims()),
        };
        dims.ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{values} values are not an image this model takes (one has {})",
                self.preprocess.values_per_image()
            ))
        })
    }

    /// …queue the vision tower on them (returns before the GPU is done on CUDA)…
    pub fn submit(&self, staged: Staged) -> Result<Submitted> {
        Ok(Submitted {
            images: self.towers.submit_images(staged.images)?,
            n: staged.n,
        })
    }

    /// …and wait for the embeddings.
    pub fn finish(&self, submitted: Submitted) -> Result<Embeddings> {
        let data = self.towers.finish_images(submitted.images)?;
        self.embeddings(data, submitted.n)
    }

    /// Whether a submitted pass runs while the host goes on (CUDA), so that staging the next one
    /// overlaps it.
    pub fn runs_asynchronously(&self) -> bool {
        self.device().is_cuda()
    }

    /// Embeds RGB images, preprocessed by the model's own settings.
    pub fn embed_images(&self, images: &[::image::RgbImage]) -> Result<Embeddings> {
        let rows: Vec<Pixels> = images
            .iter()
            .map(|img| image::preprocess(img, &self.preprocess))
            .collect();
        self.embed_rows(&rows.iter().collect::<Vec<_>>())
    }

    pub fn embed_token_ids(&self, texts: &[TokenIds]) -> Result<Embeddings> {
        if texts.is_empty() {
            return Err(Error::InvalidArgument(
                "no texts given: at least one label is needed".into(),
            ));
        }
        let len = self.tokenizer.max_length();
        let ids: Vec<i64> = texts.iter().flat_map(|t| t.ids.iter().copied()).collect();
        let data = self.towers.embed_texts(&ids, texts.len(), len)?;
        self.embeddings(data, texts.len())
    }

    pub fn embed_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Embeddings> {
        self.embed_token_ids(&self.tokenize(texts)?)
    }

    fn embeddings(&self, data: Vec<f32>, n: usize) -> Result<Embeddings> {
        let dim = self.manifest.embedding_dim;
        if data.len() != n * dim {
            return Err(Error::Inference(format!(
                "model returned {} values for {n} inputs, expected {n}×{dim} (embedding_dim in the manifest)",
                data.len()
            )));
        }
        Ok(Embeddings::new(dim, data))
    }

    /// Runs both towers `rounds` times at each batch size that matters. On CUDA that is every
    /// size from `largest` (capped by a compiled package's limit) down to 1: a size's first pass
    /// there can compile fused kernels (TorchScript's executor), choose GEMM algorithms and grow
    /// the caching allocator, which would otherwise stall the first batch of that size in
    /// service; largest first, so that smaller batches fit in memory it already holds. On the
    /// CPU only the very first pass is slow (`bench/tower_probe.py`: a new size's first call
    /// takes as long as its second) and a pass can take seconds, so sizes 1 and 2 suffice. A
    /// NaFlex model is warmed up at each of its patch budgets, the largest first (each is a
    /// shape of its own).
    fn warm_up(&self, rounds: usize, largest: usize) -> Result<()> {
        let cuda = self.device().is_cuda();
        let sizes = warmup_sizes(cuda, largest, self.max_batch());
        let started = std::time::Instant::now();
        let images = self.warmup_images();
        fn rows(image: &Pixels, n: usize) -> Vec<&Pixels> {
            vec![image; n]
        }
        if cuda && rounds > 0 {
            // The overlapping worker holds two page-locked buffers at once: pin both now.
            let top = rows(&images[0], sizes[0]);
            let staged = [self.stage_rows(&top)?, self.stage_rows(&top)?];
            for pass in staged {
                self.finish(self.submit(pass)?)?;
            }
        }
        for _ in 0..rounds {
            for &n in &sizes {
                for image in &images {
                    self.embed_rows(&rows(image, n))?;
                }
                self.embed_texts(&vec!["a photo"; n])?;
            }
        }
        tracing::info!(
            rounds,
            largest_batch = sizes.iter().max().copied().unwrap_or(0),
            seconds = started.elapsed().as_secs_f64(),
            "warmed up"
        );
        Ok(())
    }

    /// One gray image per input shape the model takes: one, or one per NaFlex patch budget
    /// (the largest first).
    fn warmup_images(&self) -> Vec<Pixels> {
        let gray = ::image::RgbImage::from_pixel(64, 48, ::image::Rgb([128; 3]));
        let budgets = match &self.manifest.image.naflex {
            None => return vec![image::preprocess(&gray, &self.preprocess)],
            Some(spec) => spec.max_num_patches.iter().rev(),
        };
        budgets
            .map(|&budget| image::preprocess(&gray, &self.preprocess.with_budget(budget)))
            .collect()
    }
}

/// The batch sizes [`Model::warm_up`] runs, in order.
fn warmup_sizes(cuda: bool, largest: usize, package_max: Option<usize>) -> Vec<usize> {
    let top = package_max.map_or(largest, |max| max.min(largest)).max(1);
    if cuda {
        (1..=top).rev().collect()
    } else {
        (1..=top.min(2)).collect()
    }
}

/// Where and how a loaded model runs ([`Model::running_on`]).
#[derive(Debug, Clone)]
pub struct RunningOn {
    /// `cpu`, `cuda:0`, …
    pub device: String,
    pub dtype: DType,
    /// What runs the vision tower: `torchscript` or `aoti`.
    pub backend: &'static str,
    /// Bytes of the model's parameters on the device.
    pub parameter_bytes: u64,
}

/// Images copied into host memory for the device, not yet sent ([`Model::stage_rows`]).
pub struct Staged {
    images: runtime::StagedImages,
    n: usize,
}

/// Images whose vision pass is queued on the device ([`Model::submit`]).
pub struct Submitted {
    images: runtime::SubmittedImages,
    n: usize,
}

#[cfg(test)]
mod tests {
    use super::warmup_sizes;

    #[test]
    fn warm_up_covers_every_batch_size_on_cuda_and_two_on_the_cpu_within_the_package_limit() {
        assert_eq!(warmup_sizes(true, 4, None), [4, 3, 2, 1]);
        assert_eq!(warmup_sizes(true, 64, Some(3)), [3, 2, 1]);
        assert_eq!(warmup_sizes(true, 0, None), [1]);
        assert_eq!(warmup_sizes(false, 64, None), [1, 2]);
        assert_eq!(warmup_sizes(false, 64, Some(1)), [1]);
    }
}
