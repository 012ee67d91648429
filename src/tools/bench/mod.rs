//! `siglip-serve bench`: load on a running server over gRPC, and the model alone for comparison.
//!
//! Phases, each printed as it ends and written to `--json`:
//! 1. *closed loop*: `--concurrency` callers send Classify (a photo, `--labels` texts) back to
//!    back: images/s, latency percentiles, the distribution of the server's batch sizes;
//! 2. *half load*: requests at half the rate phase 1 reached, open loop: latency at moderate load;
//!
//! (both with the server's own queue / preprocess / inference times per request, so a latency
//! tail can be placed);
//! 3. *video*: `--streams` latest-only streams whose frames together arrive at
//!    `--stream-overload` × phase 1's rate: results/s, frames dropped, and the age of each
//!    result (first half against second half of the run: a growing lag would show);
//! 4. *fair share*: `--fair-streams` N streams at unequal rates, stream i offering
//!    (1.25 + 0.75 i) / N of phase 1's images/s (each above its share, together over capacity):
//!    each stream's results/s over `--seconds` after a warm-up of a quarter of that, how far the
//!    furthest is from capacity / N, and Jain's index;
//! 5. *oip* (unless `--skip-oip`): the Open Inference Protocol's ModelInfer against Classify,
//!    the same photos and labels at `--concurrency`, alternating in the same run: its cost in
//!    throughput;
//! 6. *model only* (unless `--skip-model-only`): the vision tower in a loop, in-process, at the
//!    batch size the server used most, same dtype and threads — the ceiling the server is
//!    measured against.
//!
//! With `--max-num-patches M` (a SigLIP 2 NaFlex server), requests and the model alone run at
//! that patch budget, and one more phase compares host preprocessing at M with the
//! fixed-resolution path at the same pixel count (`naflex`).
//!
//! With `--models A B` (a server with a repository), only the two-model phase runs (`models`):
//! each model's closed-loop images/s alone, then B's latency under a closed-loop flood of A,
//! against the bound the server keeps (2 × B's idle latency + one batch of A, both measured in
//! the same run).
//!
//! Phases 1 and 2 are in `load`, 3 in `video`, 4 in `fair`, 5 in `oip`, 6 in `model_only`; this module
//! runs them in order. The printed lines are parsed (`bench/report.py`, `bench/*.sh`, the
//! Makefile): their shape is an interface.

mod fair;
mod load;
mod model_only;
mod models;
mod naflex;
mod oip;
mod tracing;
mod video;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

use super::client::{wait_until_ready, ClientArgs};
use super::cost::{CpuCost, Snapshot};
use super::stats::peak_rss_mib;
use crate::config::ModelArgs;
use crate::grpc::pb;
pub use fair::{FairMode, FairReport};
pub use load::Phase;
pub use video::VideoReport;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Server address (https:// for TLS).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Photos to send (cycled).
    #[arg(long, num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// JSON list of label texts; the first `--labels` are used (cycled if fewer).
    #[arg(long)]
    pub labels_file: PathBuf,
    #[arg(long, default_value_t = 10)]
    pub labels: usize,
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Latest-only video streams (0: skip the video phase).
    #[arg(long, default_value_t = 2)]
    pub streams: usize,
    /// Frames arrive at this multiple of the closed-loop images/s, over all streams.
    #[arg(long, default_value_t = 2.0)]
    pub stream_overload: f64,
    /// Streams in the fair-share phase, at unequal rates each above its share of capacity
    /// (0: skip the phase).
    #[arg(long, default_value_t = 4)]
    pub fair_streams: usize,
    /// How the fair-share streams are delivered.
    #[arg(long, value_enum, default_value_t = FairMode::Latest)]
    pub fair_mode: FairMode,
    /// The server's process id (same machine), to report its peak resident memory and the CPU
    /// it spends per image.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The server's metrics endpoint (host:port), for the CPU of its own stages per image.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Skip the model-alone phase (it loads the model in this process).
    #[arg(long)]
    pub skip_model_only: bool,
    /// Skip the Open Inference Protocol phase (ModelInfer against Classify).
    #[arg(long)]
    pub skip_oip: bool,
    /// The model the server runs (same directory, device, dtype and threads).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Write all figures here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A second server, the same model with `--otlp-endpoint http://<--otlp-sink-addr>`: run
    /// only the tracing phase (Classify on it against `--addr`, tracing off, alternating).
    #[arg(long)]
    pub traced_addr: Option<String>,
    /// Where the tracing phase's OTLP receiver listens (the traced server's endpoint).
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub otlp_sink_addr: std::net::SocketAddr,
    /// Two models of the server's repository, A and B: run only the two-model phase (each
    /// model's throughput alone, then B's latency under a flood of A, against 2 × B's idle
    /// latency + one batch of A).
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub models: Vec<String>,
    /// A SigLIP 2 NaFlex server: send requests at this patch budget, run the model alone at it,
    /// and compare host preprocessing at it with the fixed-resolution path.
    #[arg(long)]
    pub max_num_patches: Option<u32>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub closed_loop: Phase,
    pub half_load: Phase,
    pub video: Option<VideoReport>,
    pub fair: Option<FairReport>,
    pub models: Option<models::ModelsReport>,
    pub naflex_preprocess: Option<naflex::PreprocessReport>,
    pub oip: Option<oip::OipReport>,
    pub tracing: Option<tracing::TracingReport>,
    pub model_only_img_s: Option<f64>,
    pub model_only_batch: Option<usize>,
    /// The closed loop's CPU per image: the server's, the model's and the rest by stage.
    pub cpu: Option<CpuCost>,
    /// A forward pass at `model_only_batch` in the server during the closed loop (the mean of
    /// its responses' inference times), and the tower alone at that batch, in ms.
    pub model_in_server_ms: Option<f64>,
    pub model_only_ms: Option<f64>,
    pub server_peak_rss_mib: Option<f64>,
    pub device: String,
    pub dtype: String,
    /// What ran the vision tower in the server (`torchscript`, `aoti`).
    pub backend: String,
    /// The `--jit-optimize` setting of the server and of the model-alone run.
    pub jit_optimize: bool,
}

/// What every phase sends: the photos, the label texts, the model they name ("": the
/// server's default) and its options.
struct Workload {
    images: Vec<Vec<u8>>,
    labels: Vec<String>,
    model: String,
    options: Option<pb::ClassifyOptions>,
}

impl Workload {
    fn load(args: &BenchArgs) -> anyhow::Result<Self> {
        let images = args
            .images
            .iter()
            .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let all: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&args.labels_file)?)
            .with_context(|| {
            format!(
                "{} must be a JSON list of strings",
                args.labels_file.display()
            )
        })?;
        if all.is_empty() {
            bail!("{} holds no labels", args.labels_file.display());
        }
        let labels = all.iter().cycle().take(args.labels).cloned().collect();
        let options = args.max_num_patches.map(|m| pb::ClassifyOptions {
            max_num_patches: m,
            ..Default::default()
        });
        Ok(Self {
            images,
            labels,
            model: String::new(),
            options,
        })
    }

    /// The same photos and labels, sent to `model`.
    fn for_model(&self, model: &str) -> Self {
        Self {
            images: self.images.clone(),
            labels: self.labels.clone(),
            model: model.into(),
            options: self.options,
        }
    }

    /// The `i`-th photo (cycled), encoded.
    fn image(&self, i: usize) -> pb::Image {
        pb::Image {
            source: Some(pb::image::Source::Encoded(
                self.images[i % self.images.len()].clone(),
            )),
        }
    }

    fn request(&self, i: usize) -> pb::ClassifyRequest {
        pb::ClassifyRequest {
            model: self.model.clone(),
            image: Some(self.image(i)),
            texts: self.labels.clone(),
            options: self.options,
        }
    }

    /// A stream's configuration message: the labels, delivered by `mode`.
    fn stream_config(&self, mode: pb::DeliveryMode) -> pb::StreamRequest {
        pb::StreamRequest {
            msg: Some(pb::stream_request::Msg::Config(pb::StreamConfig {
                model: self.model.clone(),
                texts: self.labels.clone(),
                options: self.options,
                mode: mode as i32,
                ..Default::default()
            })),
        }
    }
}

/// Runs the phases in order, printing each as it ends; writes the report to `--json`.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    let workload = Arc::new(Workload::load(&args)?);
    let channel = args.client.connect(&args.addr).await?;
    let client = args
        .client
        .client(channel.clone())?
        .max_decoding_message_size(64 << 20);
    let info = wait_until_ready(&client).await?;
    let mut report = Report {
        device: info.device.clone(),
        dtype: info.dtype.clone(),
        backend: info.backend.clone(),
        jit_optimize: args.model.jit_optimize,
        ..Report::default()
    };
    let phase = Duration::from_secs_f64(args.seconds);

    if let [a, b] = args.models.as_slice() {
        let two = models::run(&client, &workload, [a, b], args.concurrency, phase).await?;
        two.print();
        report.models = Some(two);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        }
        return Ok(report);
    }

    if let Some(traced_addr) = &args.traced_addr {
        let traced = args
            .client
            .client(args.client.connect(traced_addr).await?)?
            .max_decoding_message_size(64 << 20);
        wait_until_ready(&traced).await?;
        for i in 0..3 {
            for c in [&client, &traced] {
                c.clone().classify(workload.request(i)).await?;
            }
        }
        let cost = tracing::run(
            &client,
            &traced,
            args.otlp_sink_addr,
            &workload,
            &info.dtype,
            args.concurrency,
            phase,
        )
        .await?;
        cost.print();
        report.tracing = Some(cost);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        }
        return Ok(report);
    }

    // Warm the text cache and the server's first calls; not measured.
    for i in 0..3 {
        client.clone().classify(workload.request(i)).await?;
    }

    let metrics_addr = args.metrics_addr.as_deref();
    let before = Snapshot::take(args.server_pid, metrics_addr).await;
    report.closed_loop = load::closed_loop(&client, &workload, args.concurrency, phase)
        .await
        .into_phase(None);
    let after = Snapshot::take(args.server_pid, metrics_addr).await;
    report
        .closed_loop
        .print(&format!("closed loop {}", args.concurrency));
    let served = report.closed_loop.batch_sizes.values().sum();
    let cost = CpuCost::between(&before, &after, served);
    cost.print();
    report.cpu = Some(cost);

    let rate = report.closed_loop.img_s / 2.0;
    report.half_load = load::open_loop(&client, &workload, rate, phase)
        .await
        .into_phase(Some(rate));
    report.half_load.print("half load");

    if args.streams > 0 {
        let fps = report.closed_loop.img_s * args.stream_overload / args.streams as f64;
        let video = video::run(&client, &workload, args.streams, fps, phase).await?;
        video.print();
        report.video = Some(video);
    }

    if args.fair_streams > 0 {
        let n = args.fair_streams;
        let share = report.closed_loop.img_s / n as f64;
        let offered = (0..n).map(|i| (1.25 + 0.75 * i as f64) * share).collect();
        // The first seconds fill the queue and the streams' pipelines: not counted.
        let fair = fair::run(
            &client,
            &workload,
            args.fair_mode,
            offered,
            phase / 4,
            phase,
        )
        .await?;
        fair.print();
        report.fair = Some(fair);
    }

    if !args.skip_oip {
        let oip_client = args.client.oip_client(channel)?;
        let cost = oip::run(&client, &oip_client, &workload, args.concurrency, phase).await;
        cost.print();
        report.oip = Some(cost);
    }

    report.server_peak_rss_mib = args.server_pid.and_then(peak_rss_mib);
    if let Some(rss) = report.server_peak_rss_mib {
        println!("server peak RSS {rss:.0} MiB");
    }

    if !args.skip_model_only {
        model_only_phase(&args.model, args.max_num_patches, phase, &mut report).await?;
    }

    if let Some(budget) = args.max_num_patches {
        let dir = args.model.single_dir()?;
        let photos = workload.images.clone();
        let preprocess =
            tokio::task::spawn_blocking(move || naflex::run(&dir, &photos, budget, phase / 4))
                .await??;
        preprocess.print();
        report.naflex_preprocess = Some(preprocess);
    }

    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(report)
}

/// The tower alone at the batch size the server used most in the closed loop (at a NaFlex
/// model's budget `max_patches`), against a pass of that size in the server.
async fn model_only_phase(
    model: &ModelArgs,
    max_patches: Option<u32>,
    phase: Duration,
    report: &mut Report,
) -> anyhow::Result<()> {
    let model_args = model.clone();
    let batch = report
        .closed_loop
        .batch_sizes
        .iter()
        .filter(|(size, _)| **size > 0)
        .max_by_key(|(_, count)| **count)
        .map_or(8, |(size, _)| *size as usize);
    let (img_s, alone) = tokio::task::spawn_blocking(move || {
        model_only::run(&model_args, batch, max_patches, phase)
    })
    .await??;
    println!("model only    batch {batch:>3}  {img_s:>8.2} img/s");
    report.model_only_img_s = Some(img_s);
    report.model_only_batch = Some(batch);
    report.model_only_ms = Some(alone);
    report.model_in_server_ms = report
        .closed_loop
        .inference_ms_by_batch
        .get(&(batch as u32))
        .copied();
    if let Some(in_server) = report.model_in_server_ms {
        println!(
            "model         a pass of {batch}: {in_server:.1} ms in the server, {alone:.1} ms alone \
             ({:+.1}%)",
            100.0 * (in_server / alone - 1.0)
        );
    }
    Ok(())
}
