//! Command-line flags. Every flag can also be set through the environment variable named next
//! to it, so a container or a Kubernetes manifest needs no command line.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::batch::BatchConfig;
use crate::grpc;
use crate::health::HealthPolicy;
use crate::infer::{self, Limits};
use crate::model::{
    device::{BackendChoice, DTypeChoice, DeviceChoice},
    image::{Convention, ImageLimits},
    LoadOptions,
};

/// Which model to load, where, and how.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory written by `python -m siglip_export`.
    #[arg(long, env = "SIGLIP_MODEL_DIR")]
    pub model_dir: PathBuf,

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
}

impl ModelArgs {
    /// The load options, for a caller whose largest batch is `largest_batch`.
    pub fn load_options(&self, largest_batch: usize) -> LoadOptions {
        LoadOptions {
            dir: self.model_dir.clone(),
            device: self.device,
            dtype: self.dtype,
            warmup_rounds: self.warmup_rounds,
            largest_batch,
            backend: self.backend,
            jit_optimize: self.jit_optimize,
            threads: self.threads,
        }
    }
}

/// Limits on what one caller may ask for. Each is a flag, so operators can size them to their
/// hardware and clients.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest encoded image accepted, in bytes (whole, or reassembled from chunks).
    #[arg(long, env = "SIGLIP_MAX_IMAGE_BYTES", default_value_t = ImageLimits::DEFAULT.max_bytes)]
    pub max_image_bytes: usize,

    /// Largest image accepted, in pixels (width × height), checked from the header before decoding.
    #[arg(long, env = "SIGLIP_MAX_IMAGE_PIXELS", default_value_t = ImageLimits::DEFAULT.max_pixels)]
    pub max_image_pixels: u64,

    /// Longest image side accepted, in pixels.
    #[arg(long, env = "SIGLIP_MAX_IMAGE_SIDE", default_value_t = ImageLimits::DEFAULT.max_side)]
    pub max_image_side: u32,

    /// Most scans in a JPEG, counted from its markers before decoding; more is refused with
    /// INVALID_ARGUMENT. Encoders write 1 (baseline) or about 10 (progressive); each scan costs
    /// a pass over every block, so thousands of empty scans in a small file cost seconds.
    #[arg(long, env = "SIGLIP_MAX_JPEG_SCANS", default_value_t = ImageLimits::DEFAULT.max_jpeg_scans)]
    pub max_jpeg_scans: usize,

    /// Most texts (labels) in one request or stream configuration.
    #[arg(long, env = "SIGLIP_MAX_TEXTS", default_value_t = Limits::DEFAULT.max_texts)]
    pub max_texts: usize,

    /// Longest text accepted, in bytes (texts over 64 tokens are truncated, EOS kept).
    #[arg(long, env = "SIGLIP_MAX_TEXT_BYTES", default_value_t = Limits::DEFAULT.max_text_bytes)]
    pub max_text_bytes: usize,

    /// Most images in one EmbedImage request.
    #[arg(long, env = "SIGLIP_MAX_IMAGES", default_value_t = Limits::DEFAULT.max_images)]
    pub max_images: usize,

    /// Most regions of one stream frame (from its config or the frame), each classified on its
    /// own and counted as one pending image; more is refused with INVALID_ARGUMENT. At most
    /// --max-pending-images.
    #[arg(long, env = "SIGLIP_MAX_REGIONS", default_value_t = Limits::DEFAULT.max_regions)]
    pub max_regions: usize,

    /// Largest gRPC message accepted, in bytes (bigger images go through Upload in chunks).
    #[arg(long, env = "SIGLIP_MAX_MESSAGE_BYTES", default_value_t = 4 << 20)]
    pub max_message_bytes: usize,

    /// Most concurrent Stream calls; one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "SIGLIP_MAX_STREAMS", default_value_t = 64)]
    pub max_streams: usize,

    /// Longest a Stream call may last, in seconds (0: no limit); then it ends with UNAVAILABLE
    /// ("reconnect") so that a mesh can rebalance, and the client reconnects.
    #[arg(long, env = "SIGLIP_MAX_STREAM_SECONDS", default_value_t = 1800)]
    pub max_stream_seconds: u64,

    /// Frames of one every-frame stream in flight at once (ordering is kept).
    #[arg(long, env = "SIGLIP_STREAM_PIPELINE", default_value_t = 4)]
    pub stream_pipeline: usize,

    /// Images accepted and not yet answered (being decoded, queued or in a forward pass), over
    /// all requests and streams; a request that would pass it is refused with
    /// RESOURCE_EXHAUSTED. Bounds the memory of preprocessed images (3 × size² floats each:
    /// 1.8 MB at 384 px). At least --max-images.
    #[arg(long, env = "SIGLIP_MAX_PENDING_IMAGES", default_value_t = Limits::DEFAULT.max_pending_images)]
    pub max_pending_images: usize,

    /// Pixels (width × height, from the header) of the images being decoded at once, over all
    /// requests; an image waits in line, within its deadline, until it fits. Bounds the memory
    /// of decoding. At least --max-image-pixels.
    #[arg(long, env = "SIGLIP_MAX_DECODING_PIXELS", default_value_t = Limits::DEFAULT.max_decoding_pixels)]
    pub max_decoding_pixels: u64,

    /// Texts of label sets not seen before, being tokenised, queued for the text tower or in a
    /// pass, over all requests and streams; a request that would pass it is refused with
    /// RESOURCE_EXHAUSTED (a label set seen before, as written, comes from the cache and never
    /// is). At least --max-texts.
    #[arg(long, env = "SIGLIP_MAX_PENDING_TEXTS", default_value_t = Limits::DEFAULT.max_pending_texts)]
    pub max_pending_texts: usize,

    /// Bytes held by unfinished Uploads and chunked Stream frames, over all calls; a call whose
    /// next chunk does not fit is refused at once with RESOURCE_EXHAUSTED (retry later). At
    /// least --max-image-bytes.
    #[arg(long, env = "SIGLIP_MAX_REASSEMBLY_BYTES", default_value_t = 256 << 20)]
    pub max_reassembly_bytes: usize,

    /// Seconds a Stream's config or an Upload's header may take to arrive after the call opens;
    /// then DEADLINE_EXCEEDED.
    #[arg(
        long,
        env = "SIGLIP_FIRST_MESSAGE_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub first_message_timeout_seconds: u64,

    /// Seconds a Stream or Upload may go without a message after its first, and a send to a
    /// Stream client that does not read may wait; then DEADLINE_EXCEEDED. Long enough for a
    /// paused live video.
    #[arg(long, env = "SIGLIP_IDLE_TIMEOUT_SECONDS", default_value_t = 300)]
    pub idle_timeout_seconds: u64,

    /// The deadline, in seconds, of a unary call or Upload that carries none (no grpc-timeout);
    /// then DEADLINE_EXCEEDED (0: none).
    #[arg(long, env = "SIGLIP_REQUEST_TIMEOUT_SECONDS", default_value_t = 60)]
    pub request_timeout_seconds: u64,
}

impl LimitArgs {
    /// What the core allows one caller.
    pub fn core(&self) -> Limits {
        Limits {
            image: ImageLimits {
                max_bytes: self.max_image_bytes,
                max_pixels: self.max_image_pixels,
                max_side: self.max_image_side,
                max_jpeg_scans: self.max_jpeg_scans,
            },
            max_texts: self.max_texts,
            max_text_bytes: self.max_text_bytes,
            max_images: self.max_images,
            max_regions: self.max_regions,
            max_pending_images: self.max_pending_images,
            max_decoding_pixels: self.max_decoding_pixels,
            max_pending_texts: self.max_pending_texts,
        }
    }

    /// What the gRPC layer allows one caller.
    pub fn transport(&self) -> grpc::Limits {
        grpc::Limits {
            max_message_bytes: self.max_message_bytes,
            max_streams: self.max_streams,
            max_stream_seconds: self.max_stream_seconds,
            stream_pipeline: self.stream_pipeline,
            max_reassembly_bytes: self.max_reassembly_bytes,
            first_message_timeout: Duration::from_secs(self.first_message_timeout_seconds),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds),
            request_timeout: (self.request_timeout_seconds > 0)
                .then(|| Duration::from_secs(self.request_timeout_seconds)),
        }
    }

    /// Refuses settings that could never work together.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.max_pending_images < self.max_images {
            anyhow::bail!(
                "--max-pending-images {} is less than --max-images {}: a full EmbedImage request \
                 could never be accepted; raise it or lower --max-images",
                self.max_pending_images,
                self.max_images
            );
        }
        if self.max_regions == 0 || self.max_regions > self.max_pending_images {
            anyhow::bail!(
                "--max-regions {} must be between 1 and --max-pending-images {}: a frame's \
                 regions are admitted together, so more could never be accepted",
                self.max_regions,
                self.max_pending_images
            );
        }
        if self.max_decoding_pixels < self.max_image_pixels {
            anyhow::bail!(
                "--max-decoding-pixels {} is less than --max-image-pixels {}: the largest image \
                 accepted could never be decoded; raise it or lower --max-image-pixels",
                self.max_decoding_pixels,
                self.max_image_pixels
            );
        }
        if self.max_decoding_pixels > u64::from(u32::MAX) {
            anyhow::bail!(
                "--max-decoding-pixels {} is over {}, the most it can count",
                self.max_decoding_pixels,
                u32::MAX
            );
        }
        if self.max_pending_texts < self.max_texts {
            anyhow::bail!(
                "--max-pending-texts {} is less than --max-texts {}: a full label set could \
                 never be accepted; raise it or lower --max-texts",
                self.max_pending_texts,
                self.max_texts
            );
        }
        if self.max_reassembly_bytes < self.max_image_bytes {
            anyhow::bail!(
                "--max-reassembly-bytes {} is less than --max-image-bytes {}: an image at the \
                 limit could never be uploaded; raise it or lower --max-image-bytes",
                self.max_reassembly_bytes,
                self.max_image_bytes
            );
        }
        if self.first_message_timeout_seconds == 0 || self.idle_timeout_seconds == 0 {
            anyhow::bail!(
                "--first-message-timeout-seconds and --idle-timeout-seconds must be at least 1: \
                 no client could send in time"
            );
        }
        Ok(())
    }
}

/// HTTP/2 and TCP, as a production gRPC server runs them (tonic's defaults leave every one of
/// these off).
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Concurrent calls (HTTP/2 streams) per connection; a client's further calls wait for one to
    /// finish (0: no limit).
    #[arg(
        long,
        env = "SIGLIP_HTTP2_MAX_CONCURRENT_STREAMS",
        default_value_t = 256
    )]
    pub http2_max_concurrent_streams: u32,

    /// Streams a client may reset before the server has accepted them, pending at once; more
    /// closes the connection (HTTP/2 rapid reset, CVE-2023-44487).
    #[arg(
        long,
        env = "SIGLIP_HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS",
        default_value_t = 20
    )]
    pub http2_max_pending_accept_reset_streams: usize,

    /// Streams the server may reset for a client's protocol errors on one connection; more
    /// closes the connection.
    #[arg(
        long,
        env = "SIGLIP_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS",
        default_value_t = 1024
    )]
    pub http2_max_local_error_reset_streams: usize,

    /// Seconds between HTTP/2 PINGs on a connection (0: none); a peer that does not answer within
    /// --http2-keepalive-timeout-seconds is disconnected.
    #[arg(
        long,
        env = "SIGLIP_HTTP2_KEEPALIVE_INTERVAL_SECONDS",
        default_value_t = 60
    )]
    pub http2_keepalive_interval_seconds: u64,

    /// Seconds a PING's answer may take.
    #[arg(
        long,
        env = "SIGLIP_HTTP2_KEEPALIVE_TIMEOUT_SECONDS",
        default_value_t = 20
    )]
    pub http2_keepalive_timeout_seconds: u64,

    /// Seconds after which a connection is sent GOAWAY, so that clients reconnect and meshes
    /// rebalance (0: never); calls in flight go on.
    #[arg(
        long,
        env = "SIGLIP_MAX_CONNECTION_AGE_SECONDS",
        default_value_t = 1800
    )]
    pub max_connection_age_seconds: u64,

    /// Seconds a connection past its age may take to finish its calls before it is closed.
    #[arg(
        long,
        env = "SIGLIP_MAX_CONNECTION_AGE_GRACE_SECONDS",
        default_value_t = 60
    )]
    pub max_connection_age_grace_seconds: u64,

    /// TCP_NODELAY on accepted connections (results and pings go out at once).
    #[arg(long, env = "SIGLIP_TCP_NODELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub tcp_nodelay: bool,

    /// Seconds of silence before TCP keepalive probes (0: none).
    #[arg(long, env = "SIGLIP_TCP_KEEPALIVE_SECONDS", default_value_t = 60)]
    pub tcp_keepalive_seconds: u64,
}

impl ConnectionArgs {
    pub fn transport(&self) -> grpc::Connection {
        let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        grpc::Connection {
            max_concurrent_streams: (self.http2_max_concurrent_streams > 0)
                .then_some(self.http2_max_concurrent_streams),
            max_pending_accept_reset_streams: self.http2_max_pending_accept_reset_streams,
            max_local_error_reset_streams: self.http2_max_local_error_reset_streams,
            keepalive: seconds(self.http2_keepalive_interval_seconds).map(|interval| {
                (
                    interval,
                    Duration::from_secs(self.http2_keepalive_timeout_seconds),
                )
            }),
            max_age: seconds(self.max_connection_age_seconds),
            max_age_grace: Duration::from_secs(self.max_connection_age_grace_seconds),
            tcp_nodelay: self.tcp_nodelay,
            tcp_keepalive: seconds(self.tcp_keepalive_seconds),
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

/// Who may connect and call: TLS, mutual TLS, bearer tokens, reflection. The files are re-read
/// as they change (see `grpc::Reloading`).
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key); plaintext without.
    #[arg(long, env = "SIGLIP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "SIGLIP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: clients must present a certificate signed by one (mutual TLS).
    #[arg(long, env = "SIGLIP_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds a TLS handshake may take before the connection is closed.
    #[arg(long, env = "SIGLIP_TLS_HANDSHAKE_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_seconds: u64,

    /// TLS handshakes in progress at once; further connections wait, unaccepted, until one ends.
    #[arg(long, env = "SIGLIP_MAX_TLS_HANDSHAKES", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tls_handshakes: u64,

    /// Bearer tokens, one per line as `<token> [name]`: every call but health must carry one
    /// (`authorization: Bearer <token>`).
    #[arg(long, env = "SIGLIP_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Seconds between checks of the TLS and token files for changes; new material applies to
    /// new connections and calls.
    #[arg(long, env = "SIGLIP_WATCH_SECONDS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub watch_seconds: u64,

    /// Serve gRPC server reflection (behind the tokens, when there are tokens).
    #[arg(long, env = "SIGLIP_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,
}

impl SecurityArgs {
    /// Loads the TLS material and tokens (an error here stops the start) and starts watching
    /// their files.
    pub fn load(&self) -> anyhow::Result<grpc::Security> {
        let watch = Duration::from_secs(self.watch_seconds);
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(grpc::Tls::load(
                &grpc::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls_client_ca.clone(),
                },
                watch,
                grpc::Handshakes {
                    timeout: Duration::from_secs(self.tls_handshake_timeout_seconds),
                    max_in_progress: self.max_tls_handshakes as usize,
                },
            )?),
            _ => None,
        };
        let tokens = self
            .auth_tokens_file
            .clone()
            .map(|path| grpc::Tokens::load(path, watch))
            .transpose()?;
        Ok(grpc::Security {
            tls,
            tokens,
            reflection: self.reflection,
        })
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
    /// How the core runs: the limits, the image convention, the preprocessing pool and the text
    /// cache.
    pub fn core(&self) -> infer::Config {
        infer::Config {
            limits: self.limits.core(),
            convention: self.model.image_convention,
            preprocess_threads: self.batch.preprocess_threads,
            text_cache_size: self.batch.text_cache_size,
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

    /// The README's flag table as (flag, env, default), the default as clap gives it: "32 MiB"
    /// is 33554432, "50 000 000" is 50000000, "0 (all cores)" is 0; "—" (none) and "off" (a
    /// switch) have none.
    fn readme_flags() -> Vec<(String, String, Option<String>)> {
        let readme = include_str!("../README.md");
        let table = readme
            .split("| flag | env | default | meaning |")
            .nth(1)
            .expect("README has a flag table");
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
    fn the_readme_flag_table_is_the_flags() {
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
        let mut readme = readme_flags();
        flags.sort();
        readme.sort();
        assert_eq!(
            readme, flags,
            "README.md's flag table (left) against ServeArgs (right)"
        );
    }

    #[test]
    fn max_regions_must_fit_in_the_pending_images() {
        let parse = |args: &[&str]| {
            Serve::try_parse_from([&["serve", "--model-dir", "m"], args].concat())
                .expect("flags parse")
                .args
        };
        assert_eq!(parse(&[]).limits.core().max_regions, 16);
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
