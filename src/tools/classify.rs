//! `siglip-serve classify`: local image files against text labels, printed as each label's
//! probability. It goes through the core ([`Infer`]) like every API call: the model is loaded
//! on the inference thread behind the batcher, and each file is one [`Infer::classify`] with the
//! default limits. The printed lines are read by `make run` (the last one is the least likely
//! label) and `tests/cli.rs`.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use clap::Args;

use crate::batch::{BatchConfig, Batcher, Site};
use crate::config::ModelArgs;
use crate::error::{Error, Result};
use crate::infer::{self, ImageInput, Infer, Limits};
use crate::model::{
    image::{Preprocess, RawFormat},
    scores::{Score, ScoreFilter},
    tokenizer::TextTokenizer,
    HostSide, Model, RunningOn,
};

#[derive(Debug, Clone, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image files (JPEG, PNG, WebP, GIF, BMP, TIFF).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Text labels, e.g. "a photo of 2 cats".
    #[arg(long, num_args = 1.., required = true)]
    pub labels: Vec<String>,
    /// A SigLIP 2 NaFlex model's patch budget M, one of those the model allows (default: its
    /// own).
    #[arg(long)]
    pub max_num_patches: Option<u32>,
}

/// Classifies each file in turn and prints its scores, most likely first; a file that fails is
/// reported on stderr and the others go on. An error at the end when any failed.
pub async fn run(args: ClassifyArgs) -> anyhow::Result<()> {
    let ClassifyArgs {
        model,
        images,
        labels,
        max_num_patches,
    } = args;
    let config = infer::Config {
        // The server's limits, except on labels: a local run may score as many as it likes.
        limits: Limits {
            max_texts: labels.len().max(Limits::DEFAULT.max_texts),
            max_pending_texts: labels.len().max(Limits::DEFAULT.max_pending_texts),
            max_text_bytes: usize::MAX,
            ..Limits::DEFAULT
        },
        convention: model.image_convention,
        // The labels are embedded once, for every file.
        text_cache_size: labels.len(),
        ..Default::default()
    };
    let (batcher, (host, on), worker) = {
        let labels = labels.len();
        tokio::task::spawn_blocking(move || load(&model, labels)).await??
    };
    let tokenizer = Arc::clone(&host.tokenizer);
    let infer = Infer::alone("classify", batcher, host, config);
    let result = classify_all(&infer, &tokenizer, &on, &images, &labels, max_num_patches).await;
    // The last handle to the queue goes with the core: the inference thread drops the model and
    // ends. Wait for it, so that the process does not exit under libtorch.
    drop(infer);
    tokio::task::spawn_blocking(move || worker.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the inference thread panicked"))?;
    result
}

/// The header (model, device, dtype, warnings), then each file's scores.
async fn classify_all(
    infer: &Infer,
    tokenizer: &TextTokenizer,
    on: &RunningOn,
    images: &[PathBuf],
    labels: &[String],
    max_patches: Option<u32>,
) -> anyhow::Result<()> {
    let manifest = infer.manifest();
    let prep = infer.preprocessing(max_patches)?;
    let input = match prep.patches {
        None => format!("{}px", manifest.image.size),
        Some(p) => format!("up to {} patches of {}px", p.budget, p.size),
    };
    println!(
        "model {} ({}, {input}) on {} in {}",
        manifest.model_id, manifest.architecture, on.device, on.dtype
    );
    if manifest.source.random_weights {
        eprintln!(
            "WARNING: {} has RANDOM weights (no checkpoint could be downloaded): the pipeline is \
             real, the probabilities below are MEANINGLESS. Export a real checkpoint for real answers.",
            manifest.model_id
        );
    }
    for (label, t) in labels.iter().zip(tokenizer.encode(labels)?) {
        if t.truncated {
            eprintln!(
                "note: label {label:?} is longer than {} tokens and was truncated",
                t.ids.len()
            );
        }
    }
    infer.check_texts(labels)?;

    let mut failed = 0;
    for file in images {
        match classify(infer, file, labels, &prep).await {
            Ok((scores, (width, height))) => {
                println!("\n{} ({width}x{height})", file.display());
                for s in scores {
                    println!(
                        "  {:>7.2}%  logit {:>8.3}  {}",
                        100.0 * s.probability,
                        s.logit,
                        s.label
                    );
                }
            }
            Err(e) => {
                eprintln!("{}: error: {e}", file.display());
                failed += 1;
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{failed} of {} images could not be classified",
        images.len()
    );
    Ok(())
}

/// Starts the inference thread and loads the model on it (blocking). One file is classified at a
/// time: a pass holds one image, or the labels.
fn load(
    args: &ModelArgs,
    labels: usize,
) -> anyhow::Result<(Batcher, (HostSide, RunningOn), std::thread::JoinHandle<()>)> {
    let options = args.load_options(args.single_dir()?, 1);
    Ok(Batcher::load(
        Site::alone("classify"),
        move || Model::load(&options),
        move |model| {
            let batching = BatchConfig {
                max_batch_size: labels.max(1),
                max_batch_delay: Duration::ZERO,
                // A file's image and its labels' texts.
                queue_capacity: 2,
                pipelined: model.runs_asynchronously(),
            };
            let on = model.running_on();
            Ok((batching, (model.host_side(), on)))
        },
    )?)
}

/// One file through the core: its scores, most likely first, and its width and height. The
/// file is decoded here, as the core would (its limits, its image convention), so that its size
/// is known (under the pipeline convention EXIF orientation turns the image, so the header alone
/// cannot tell), and handed to the core as the RGB frame it decoded to: decoded once.
async fn classify(
    infer: &Infer,
    file: &Path,
    labels: &[String],
    prep: &Preprocess,
) -> Result<(Vec<Score>, (u32, u32))> {
    let bytes =
        std::fs::read(file).map_err(|e| Error::InvalidArgument(format!("cannot read: {e}")))?;
    let limits = infer.limits().image.clone();
    let (convention, decode_prep) = (infer.convention(), *prep);
    let rgb = tokio::task::spawn_blocking(move || {
        ImageInput::Encoded(bytes).decode(&limits, convention, &decode_prep)
    })
    .await
    .map_err(|e| Error::Inference(format!("decoding failed: {e}")))??;
    let (width, height) = rgb.dimensions();
    let frame = ImageInput::Raw {
        width,
        height,
        format: RawFormat::Rgb8,
        data: rgb.into_raw(),
    };
    let classification = infer
        .classify(frame, labels.to_vec(), ScoreFilter::default(), prep, None)
        .await?;
    Ok((classification.scores, (width, height)))
}
