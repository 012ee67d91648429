//! Command-line flags, and nothing else: no file is read and nothing is started here. Every flag
//! can also be set through the environment variable named next to it, so a container or a
//! Kubernetes manifest needs no command line. [`ServeArgs::check`] refuses combinations that
//! could never work; the full table is `docs/flags.md` (a test keeps the two equal).

mod connection;
mod limits;
mod security;
mod telemetry;

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::batch::BatchConfig;
use crate::health::HealthPolicy;
use crate::infer;
use crate::model::{
    device::{BackendChoice, DTypeChoice, DeviceChoice},
    image::{Convention, ImageProcessor},
    LoadOptions,
};
use crate::repository;
pub use connection::ConnectionArgs;
pub use limits::LimitArgs;
pub use security::SecurityArgs;
pub use telemetry::TraceArgs;

/// Which models to load, where, and how. The device, dtype, backend and image processor are
/// defaults that a model of a repository may override in its `serve.json`
/// (`repository::source`).
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory written by `python -m siglip_export`: a server of this one model, named
    /// after the directory. Or use --model-repository.
    #[arg(
        long,
        env = "SIGLIP_MODEL_DIR",
        required_unless_present = "model_repository",
        conflicts_with = "model_repository"
    )]
    pub model_dir: Option<PathBuf>,

    /// A directory of model directories: each sub-directory with a manifest is one model, named
    /// after it, chosen per request by the `model` field.
    #[arg(long, env = "SIGLIP_MODEL_REPOSITORY")]
    pub model_repository: Option<PathBuf>,

    /// The model of requests that name none. Unset: the only model, when there is one;
    /// with several, such requests are refused.
    #[arg(long, env = "SIGLIP_DEFAULT_MODEL")]
    pub default_model: Option<String>,

    /// Look at --model-repository every N seconds and apply what changed: new folders are loaded,
    /// changed ones (a new manifest or serve.json) swapped once warm, removed ones drained and
    /// unloaded (0: never; the repository is read once, at startup).
    #[arg(
        long,
        env = "SIGLIP_MODEL_REPOSITORY_POLL_SECONDS",
        default_value_t = 0
    )]
    pub model_repository_poll_seconds: u64,

    /// Most bytes of parameters all loaded models may hold, a new version beside the one it
    /// replaces included: a model that would pass it is refused before it is loaded (0: no
    /// limit).
    #[arg(long, env = "SIGLIP_MAX_MODEL_BYTES", default_value_t = 0)]
    pub max_model_bytes: u64,

    /// `auto` (CUDA when usable, else CPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, env = "SIGLIP_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,

    /// float32, float16, bfloat16, or auto: bfloat16 on CUDA or on a CPU with native bf16, else
    /// float32 — among the dtypes the model directory was exported in.
    #[arg(long, env = "SIGLIP_DTYPE", default_value = "auto")]
    pub dtype: DTypeChoice,

    /// What runs the vision tower: `aoti` (an AOTInductor package from `python -m siglip_export
    /// compile`, fused kernels for this device), `torchscript` (the traced tower), or `auto`: the
    /// package when the model directory has one for this device and dtype.
    #[arg(long, env = "SIGLIP_BACKEND", default_value = "auto")]
    pub backend: BackendChoice,

    /// libtorch intra-op threads (0: one per core).
    #[arg(long, env = "SIGLIP_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Forward passes per tower at startup, before the model counts as ready: at batch sizes 1
    /// and 2 on the CPU, at every batch size up to `--max-batch-size` on CUDA.
    #[arg(long, env = "SIGLIP_WARMUP_ROUNDS", default_value_t = LoadOptions::DEFAULT_WARMUP_ROUNDS)]
    pub warmup_rounds: usize,

    /// TorchScript's optimising executor (libtorch's default): profiles the first calls, then
    /// specialises the graph and, on CUDA, fuses element-wise ops. `false` runs the graph op by
    /// op, with no profiling runs and no compilation when a new batch size first appears.
    #[arg(long, env = "SIGLIP_JIT_OPTIMIZE", default_value_t = true, action = clap::ArgAction::Set)]
    pub jit_optimize: bool,

    /// Which transformers code an image follows to RGB. `processor`: as
    /// `processor(images=Image.open(f))` (SigLIP's model card): transparency composited onto
    /// white, EXIF orientation ignored. `pipeline`: as the zero-shot pipeline's `load_image(f)`:
    /// EXIF orientation applied, alpha dropped. Raw RGBA frames follow the same choice.
    #[arg(long, env = "SIGLIP_IMAGE_CONVENTION", default_value = "processor")]
    pub image_convention: Convention,

    /// Which backend of transformers' SigLIP image processor the pixels reproduce. `pil`:
    /// `SiglipImageProcessorPil` (Pillow's resampler). `torchvision`: `SiglipImageProcessor`,
    /// what `AutoImageProcessor` (and so `AutoProcessor`) picks wherever torchvision is
    /// installed, as in Colab; its pixels differ from `pil`'s by a level or a few in most photos.
    /// Independent of `--image-convention`.
    #[arg(long, env = "SIGLIP_IMAGE_PROCESSOR", default_value = "pil")]
    pub image_processor: ImageProcessor,
}

impl ModelArgs {
    /// The model directory of a command that runs one model (`classify`, `bench`'s model-alone
    /// phase); --model-repository is the server's.
    pub fn single_dir(&self) -> anyhow::Result<PathBuf> {
        self.model_dir
            .clone()
            .ok_or_else(|| anyhow::anyhow!("this command runs one model: give it --model-dir"))
    }

    /// The load options of the model in `dir`, for a caller whose largest batch is
    /// `largest_batch`, before its `serve.json`.
    pub fn load_options(&self, dir: PathBuf, largest_batch: usize) -> LoadOptions {
        LoadOptions {
            dir,
            device: self.device,
            dtype: self.dtype,
            warmup_rounds: self.warmup_rounds,
            largest_batch,
            backend: self.backend,
            jit_optimize: self.jit_optimize,
            threads: self.threads,
            image_processor: self.image_processor,
        }
    }
}

/// The inference queue and batcher.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Requests waiting for inference; one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "SIGLIP_MAX_QUEUE", default_value_t = 256)]
    pub max_queue: usize,

    /// Most images (or texts) per forward pass.
    #[arg(long, env = "SIGLIP_MAX_BATCH_SIZE", default_value_t = LoadOptions::DEFAULT_LARGEST_BATCH)]
    pub max_batch_size: usize,

    /// Longest a request waits for others to fill its batch, in milliseconds.
    #[arg(long, env = "SIGLIP_MAX_BATCH_DELAY_MS", default_value_t = 2)]
    pub max_batch_delay_ms: u64,

    /// Text embeddings kept, keyed by token ids, shared by all requests and streams (0: off).
    #[arg(long, env = "SIGLIP_TEXT_CACHE_SIZE", default_value_t = 4096)]
    pub text_cache_size: usize,

    /// Threads decoding and resizing images (0: one per core); tokenising gets half as many (at
    /// least one) of its own.
    #[arg(long, env = "SIGLIP_PREPROCESS_THREADS", default_value_t = 0)]
    pub preprocess_threads: usize,
}

/// How health follows the device: a device that keeps failing must not look healthy.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Consecutive failed inference batches (the forward pass failed, not the input) after which
    /// health says NOT_SERVING; calls are still accepted, and the next batch that succeeds makes
    /// it SERVING again (0: never).
    #[arg(long, env = "SIGLIP_UNHEALTHY_AFTER_FAILURES", default_value_t = 3)]
    pub unhealthy_after_failures: u32,

    /// Consecutive failed inference batches after which the process exits with status 1, so
    /// that Kubernetes replaces it (0: never).
    #[arg(long, env = "SIGLIP_EXIT_AFTER_FAILURES", default_value_t = 20)]
    pub exit_after_failures: u32,
}

impl HealthArgs {
    pub fn policy(&self) -> HealthPolicy {
        HealthPolicy {
            unhealthy_after: self.unhealthy_after_failures,
            exit_after: self.exit_after_failures,
        }
    }

    /// Refuses an exit before the server has ever said NOT_SERVING.
    pub fn check(&self) -> anyhow::Result<()> {
        let (unhealthy, exit) = (self.unhealthy_after_failures, self.exit_after_failures);
        if unhealthy > 0 && exit > 0 && exit < unhealthy {
            anyhow::bail!(
                "--exit-after-failures {exit} is less than --unhealthy-after-failures {unhealthy}: \
                 the process would exit before its health said NOT_SERVING; raise it, or set 0 \
                 (never exit)"
            );
        }
        Ok(())
    }
}

/// `siglip-serve serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub batch: BatchArgs,

    #[command(flatten)]
    pub health: HealthArgs,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(flatten)]
    pub security: SecurityArgs,

    #[command(flatten)]
    pub tracing: TraceArgs,

    /// Address of the gRPC server.
    #[arg(long, env = "SIGLIP_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: std::net::SocketAddr,

    /// Address of the Prometheus metrics endpoint (`GET /metrics`, plain HTTP, no token): every
    /// interface by default, for in-cluster scraping; 127.0.0.1:9090 keeps it on the host.
    #[arg(long, env = "SIGLIP_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: std::net::SocketAddr,

    /// On SIGTERM/SIGINT, how long in-flight work may take to finish, in seconds.
    #[arg(long, env = "SIGLIP_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,

    /// Log as JSON lines instead of text.
    #[arg(long, env = "SIGLIP_LOG_JSON")]
    pub log_json: bool,
}

impl ServeArgs {
    /// Refuses settings that could never work together (every check, in one place).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.model.model_repository_poll_seconds > 0 && self.model.model_repository.is_none() {
            anyhow::bail!(
                "--model-repository-poll-seconds watches a --model-repository; --model-dir is read once"
            );
        }
        self.limits.check()?;
        self.tracing.check()?;
        self.health.check()
    }

    /// How the core runs, beyond the model.
    pub fn infer_config(&self) -> infer::Config {
        infer::Config {
            limits: self.limits.infer_limits(),
            convention: self.model.image_convention,
            preprocess_threads: self.batch.preprocess_threads,
            text_cache_size: self.batch.text_cache_size,
        }
    }

    /// Where the models are and how each loads and batches.
    pub fn repository(&self) -> repository::Settings {
        let model = &self.model;
        let models = match (&model.model_dir, &model.model_repository) {
            (Some(dir), _) => repository::Models::Dir(dir.clone()),
            // clap requires one of the two.
            (None, root) => repository::Models::Repository {
                root: root.clone().unwrap_or_default(),
                poll: (model.model_repository_poll_seconds > 0)
                    .then(|| Duration::from_secs(model.model_repository_poll_seconds)),
            },
        };
        repository::Settings {
            models,
            default_model: model.default_model.clone(),
            load: model.load_options(PathBuf::new(), self.batch.max_batch_size.max(1)),
            batch: self.batching(false),
            health: self.health.policy(),
            max_model_bytes: model.max_model_bytes,
        }
    }

    /// How the inference queue batches, for a model that can (`pipelined`) or cannot overlap
    /// batches.
    pub fn batching(&self, pipelined: bool) -> BatchConfig {
        BatchConfig {
            pipelined,
            max_batch_size: self.batch.max_batch_size.max(1),
            max_batch_delay: Duration::from_millis(self.batch.max_batch_delay_ms),
            queue_capacity: self.batch.max_queue.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::ServeArgs;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    /// The documented flag table (`docs/flags.md`) as (flag, env, default), the default as clap gives it: "32 MiB"
    /// is 33554432, "50 000 000" is 50000000, "0 (all cores)" is 0; "—" (none) and "off" (a
    /// switch) have none.
    fn documented_flags() -> Vec<(String, String, Option<String>)> {
        let page = include_str!("../../docs/flags.md");
        let table = page
            .split("| flag | env | default | meaning |")
            .nth(1)
            .expect("docs/flags.md has a flag table");
        let cell = |c: &str| c.trim().trim_matches('`').to_string();
        table
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').collect();
                let default = cell(cells[3]);
                let default = default.split(" (").next().unwrap_or_default().trim();
                let default = match default {
                    "—" | "off" => None,
                    d => Some(match d.strip_suffix(" MiB") {
                        Some(mib) => (mib.parse::<usize>().expect("MiB") << 20).to_string(),
                        None => d.replace(' ', ""),
                    }),
                };
                (cell(cells[1]), cell(cells[2]), default)
            })
            .collect()
    }

    #[test]
    fn the_documented_flag_table_is_the_flags() {
        let command = Serve::command();
        let mut flags: Vec<(String, String, Option<String>)> = command
            .get_arguments()
            .filter_map(|arg| {
                Some((
                    format!("--{}", arg.get_long()?),
                    arg.get_env()?.to_string_lossy().into_owned(),
                    arg.get_default_values()
                        .first()
                        .map(|v| v.to_string_lossy().into_owned()),
                ))
            })
            .collect();
        let mut documented = documented_flags();
        flags.sort();
        documented.sort();
        assert_eq!(
            documented, flags,
            "docs/flags.md's flag table (left) against ServeArgs (right)"
        );
    }

    #[test]
    fn max_regions_must_fit_in_the_pending_images() {
        let parse = |args: &[&str]| {
            Serve::try_parse_from([&["serve", "--model-dir", "m"], args].concat())
                .expect("flags parse")
                .args
        };
        assert_eq!(parse(&[]).limits.infer_limits().max_regions, 16);
        parse(&[]).limits.check().expect("defaults are consistent");
        for bad in [["--max-regions", "0"], ["--max-regions", "513"]] {
            let err = parse(&bad).limits.check().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("--max-regions {} must be between 1", bad[1])),
                "{err}"
            );
        }
        let limits = parse(&["--max-regions", "512"]).limits;
        limits
            .check()
            .expect("512 regions fit in 512 pending images");
    }
}
