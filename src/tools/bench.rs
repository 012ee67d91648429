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
//! 5. *model only* (unless `--skip-model-only`): the vision tower in a loop, in-process, at the batch size
//!    the server used most, same dtype and threads — the ceiling the server is measured against.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::sync::Mutex;

use super::client::{Client, ClientArgs};
use super::cost::{CpuCost, Snapshot};
use crate::config::ModelArgs;
use crate::grpc::pb;
use crate::model::{pixels_per_image, LoadOptions, Model};

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
    /// The model the server runs (same directory, device, dtype and threads).
    #[command(flatten)]
    pub model: ModelArgs,
    /// Write all figures here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub closed_loop: Phase,
    pub half_load: Phase,
    pub video: Option<VideoReport>,
    pub fair: Option<FairReport>,
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

/// One load phase, as the callers saw it and as the server reported it in each response's
/// timings (where the time of a slow request went: waiting for the batch, decoding, or the model).
#[derive(Debug, Default, Serialize)]
pub struct Phase {
    /// Requests per second sent (open loop only).
    pub offered_req_s: Option<f64>,
    pub img_s: f64,
    pub latency_ms: Percentiles,
    pub queue_ms: Percentiles,
    pub preprocess_ms: Percentiles,
    pub inference_ms: Percentiles,
    /// Requests by the size of the forward pass that served them.
    pub batch_sizes: BTreeMap<u32, u64>,
    /// Mean inference time of those requests, by the same batch size (ms).
    pub inference_ms_by_batch: BTreeMap<u32, f64>,
    pub errors: u64,
}

impl Phase {
    fn print(&self, name: &str) {
        let offered = self
            .offered_req_s
            .map_or(String::new(), |r| format!("{r:.2} req/s offered  "));
        println!(
            "{name:<13} {offered}{:>8.2} img/s  latency p50 {:>7.1} p95 {:>7.1} p99 {:>7.1} ms  errors {}",
            self.img_s, self.latency_ms.p50, self.latency_ms.p95, self.latency_ms.p99, self.errors
        );
        for (part, p) in [
            ("queue", self.queue_ms),
            ("preprocess", self.preprocess_ms),
            ("inference", self.inference_ms),
        ] {
            println!(
                "{:<13}   server {part:<10} p50 {:>7.1} p95 {:>7.1} p99 {:>7.1} ms",
                "", p.p50, p.p95, p.p99
            );
        }
        println!("{:<13}   batch sizes {:?}", "", self.batch_sizes);
    }
}

#[derive(Debug, Default, Serialize, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct VideoReport {
    pub streams: usize,
    pub offered_fps: f64,
    pub results_per_s: f64,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub age_ms_first_half: Percentiles,
    pub age_ms_second_half: Percentiles,
}

/// The delivery mode of the fair-share phase's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FairMode {
    /// Latest-only: a frame that waits while a newer one arrives is dropped.
    Latest,
    /// Every frame, in order, with backpressure.
    Every,
}

impl FairMode {
    fn delivery(self) -> pb::DeliveryMode {
        match self {
            Self::Latest => pb::DeliveryMode::LatestOnly,
            Self::Every => pb::DeliveryMode::EveryFrame,
        }
    }
}

/// Streams that together offer more than the server can take: does each get its share?
#[derive(Debug, Serialize)]
pub struct FairReport {
    pub streams: usize,
    pub mode: FairMode,
    pub offered_fps: Vec<f64>,
    /// Each stream's results per second over the measured window (after the warm-up).
    pub results_per_s: Vec<f64>,
    /// Their sum, C: what the server delivered under this load.
    pub capacity: f64,
    /// The stream furthest from C / streams, in percent of C / streams.
    pub max_deviation_pct: f64,
    /// Jain's index of `results_per_s`: 1 when all are equal, 1 / streams when one takes all.
    pub jain: f64,
    pub warmup_s: f64,
    pub window_s: f64,
}

impl FairReport {
    fn new(
        mode: FairMode,
        offered_fps: Vec<f64>,
        results_per_s: Vec<f64>,
        warmup: Duration,
        window: Duration,
    ) -> Self {
        let n = results_per_s.len() as f64;
        let capacity: f64 = results_per_s.iter().sum();
        let share = capacity / n;
        let worst = results_per_s
            .iter()
            .map(|r| (r - share).abs())
            .fold(0.0, f64::max);
        let squares: f64 = results_per_s.iter().map(|r| r * r).sum();
        Self {
            streams: results_per_s.len(),
            mode,
            offered_fps,
            // Nothing delivered is as unfair as it gets, not a division by zero.
            max_deviation_pct: if share > 0.0 {
                100.0 * worst / share
            } else {
                100.0
            },
            jain: if squares > 0.0 {
                capacity * capacity / (n * squares)
            } else {
                0.0
            },
            results_per_s,
            capacity,
            warmup_s: warmup.as_secs_f64(),
            window_s: window.as_secs_f64(),
        }
    }

    fn print(&self) {
        let list = |v: &[f64]| {
            let items: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
            format!("[{}]", items.join(", "))
        };
        println!(
            "fair          {} streams  results/s {}  capacity {:.2}  worst |r_i - C/N| = {:.1}% of C/N  Jain {:.4}",
            self.streams,
            list(&self.results_per_s),
            self.capacity,
            self.max_deviation_pct,
            self.jain
        );
        println!(
            "{:<13}   {:?} delivery, offered {} fps, counted over {:.1} s after {:.1} s of warm-up",
            "",
            self.mode,
            list(&self.offered_fps),
            self.window_s,
            self.warmup_s
        );
    }
}

pub(super) fn percentiles(mut ms: Vec<f64>) -> Percentiles {
    if ms.is_empty() {
        return Percentiles::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

struct Workload {
    images: Vec<Vec<u8>>,
    labels: Vec<String>,
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
        Ok(Self { images, labels })
    }

    fn request(&self, i: usize) -> pb::ClassifyRequest {
        pb::ClassifyRequest {
            image: Some(pb::Image {
                source: Some(pb::image::Source::Encoded(
                    self.images[i % self.images.len()].clone(),
                )),
            }),
            texts: self.labels.clone(),
            options: None,
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    let workload = Arc::new(Workload::load(&args)?);
    let channel = args.client.connect(&args.addr).await?;
    let client = args
        .client
        .client(channel)?
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

    // Warm the text cache and the server's first calls; not measured.
    for i in 0..3 {
        client.clone().classify(workload.request(i)).await?;
    }

    let metrics_addr = args.metrics_addr.as_deref();
    let before = Snapshot::take(args.server_pid, metrics_addr).await;
    report.closed_loop = closed_loop(&client, &workload, args.concurrency, phase)
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
    report.half_load = open_loop(&client, &workload, rate, phase)
        .await
        .into_phase(Some(rate));
    report.half_load.print("half load");

    if args.streams > 0 {
        let fps = report.closed_loop.img_s * args.stream_overload / args.streams as f64;
        let video = video(&client, &workload, args.streams, fps, phase).await?;
        println!(
            "video         {} streams × {:.2} fps offered  {:>8.2} results/s  dropped {}/{}  age p95 {:.0} ms → {:.0} ms (first → second half)",
            video.streams,
            video.offered_fps,
            video.results_per_s,
            video.frames_dropped,
            video.frames_sent,
            video.age_ms_first_half.p95,
            video.age_ms_second_half.p95
        );
        report.video = Some(video);
    }

    if args.fair_streams > 0 {
        let n = args.fair_streams;
        let share = report.closed_loop.img_s / n as f64;
        let offered = (0..n).map(|i| (1.25 + 0.75 * i as f64) * share).collect();
        // The first seconds fill the queue and the streams' pipelines: not counted.
        let fair = fair_share(
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

    report.server_peak_rss_mib = args.server_pid.and_then(peak_rss_mib);
    if let Some(rss) = report.server_peak_rss_mib {
        println!("server peak RSS {rss:.0} MiB");
    }

    if !args.skip_model_only {
        let model_args = args.model.clone();
        let batch = report
            .closed_loop
            .batch_sizes
            .iter()
            .filter(|(size, _)| **size > 0)
            .max_by_key(|(_, count)| **count)
            .map_or(8, |(size, _)| *size as usize);
        let (img_s, alone) =
            tokio::task::spawn_blocking(move || model_only(&model_args, batch, phase)).await??;
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
    }

    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(report)
}

/// The server answers UNAVAILABLE while its model loads: wait (up to 10 minutes).
pub(super) async fn wait_until_ready(client: &Client) -> anyhow::Result<pb::ModelInfo> {
    let until = Instant::now() + Duration::from_secs(600);
    loop {
        match client
            .clone()
            .get_model_info(pb::GetModelInfoRequest {})
            .await
        {
            Ok(info) => return Ok(info.into_inner()),
            Err(status) if status.code() == tonic::Code::Unavailable && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => bail!("server not ready: {status}"),
        }
    }
}

#[derive(Default)]
struct Tally {
    done: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
    queue_ms: Vec<f64>,
    preprocess_ms: Vec<f64>,
    inference_ms: Vec<f64>,
    batch_sizes: BTreeMap<u32, u64>,
    inference_ms_by_batch: BTreeMap<u32, f64>,
    elapsed: Duration,
}

impl Tally {
    fn record(
        &mut self,
        started: Instant,
        result: Result<tonic::Response<pb::ClassifyResponse>, tonic::Status>,
    ) {
        match result {
            Ok(response) => {
                self.done += 1;
                self.latencies_ms
                    .push(started.elapsed().as_secs_f64() * 1e3);
                let t = response.into_inner().timings.unwrap_or_default();
                self.queue_ms.push(t.queue_us as f64 / 1e3);
                self.preprocess_ms.push(t.preprocess_us as f64 / 1e3);
                self.inference_ms.push(t.inference_us as f64 / 1e3);
                *self.batch_sizes.entry(t.batch_size).or_default() += 1;
                *self.inference_ms_by_batch.entry(t.batch_size).or_default() +=
                    t.inference_us as f64 / 1e3;
            }
            Err(_) => self.errors += 1,
        }
    }

    fn into_phase(self, offered_req_s: Option<f64>) -> Phase {
        Phase {
            offered_req_s,
            img_s: self.done as f64 / self.elapsed.as_secs_f64(),
            latency_ms: percentiles(self.latencies_ms),
            queue_ms: percentiles(self.queue_ms),
            preprocess_ms: percentiles(self.preprocess_ms),
            inference_ms: percentiles(self.inference_ms),
            inference_ms_by_batch: self
                .inference_ms_by_batch
                .into_iter()
                .map(|(size, sum)| (size, sum / self.batch_sizes[&size].max(1) as f64))
                .collect(),
            batch_sizes: self.batch_sizes,
            errors: self.errors,
        }
    }
}

/// Waits for every caller, then returns what they recorded.
async fn gather(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tally: Arc<Mutex<Tally>>,
    started: Instant,
) -> Tally {
    for task in tasks {
        let _ = task.await;
    }
    let mut tally = std::mem::take(&mut *tally.lock().await);
    tally.elapsed = started.elapsed();
    tally
}

async fn closed_loop(
    client: &Client,
    workload: &Arc<Workload>,
    callers: usize,
    duration: Duration,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (mut client, workload, tally) =
                (client.clone(), Arc::clone(workload), Arc::clone(&tally));
            tokio::spawn(async move {
                let mut i = caller;
                while started.elapsed() < duration {
                    let t = Instant::now();
                    let result = client.classify(workload.request(i)).await;
                    tally.lock().await.record(t, result);
                    i += callers;
                }
            })
        })
        .collect();
    gather(tasks, tally, started).await
}

async fn open_loop(
    client: &Client,
    workload: &Arc<Workload>,
    rate: f64,
    duration: Duration,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut ticker = tokio::time::interval(interval);
    let mut tasks = Vec::new();
    let mut i = 0;
    while started.elapsed() < duration {
        ticker.tick().await;
        let (mut client, workload, tally) =
            (client.clone(), Arc::clone(workload), Arc::clone(&tally));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let result = client.classify(workload.request(i)).await;
            tally.lock().await.record(t, result);
        }));
        i += 1;
    }
    gather(tasks, tally, started).await
}

async fn video(
    client: &Client,
    workload: &Arc<Workload>,
    streams: usize,
    fps: f64,
    duration: Duration,
) -> anyhow::Result<VideoReport> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|s| {
            let (mut client, workload) = (client.clone(), Arc::clone(workload));
            tokio::spawn(async move {
                one_stream(&mut client, &workload, s, fps, duration, started).await
            })
        })
        .collect();
    let (mut sent, mut dropped, mut results) = (0, 0, 0);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for task in tasks {
        let s = task.await??;
        sent += s.sent;
        dropped += s.dropped;
        results += s.ages.len() as u64;
        for (at, age) in s.ages {
            if at < duration / 2 {
                first.push(age);
            } else {
                second.push(age);
            }
        }
    }
    Ok(VideoReport {
        streams,
        offered_fps: fps,
        results_per_s: results as f64 / started.elapsed().as_secs_f64(),
        frames_sent: sent,
        frames_dropped: dropped,
        age_ms_first_half: percentiles(first),
        age_ms_second_half: percentiles(second),
    })
}

struct StreamTally {
    sent: u64,
    dropped: u64,
    /// (when the result arrived, since the start; its age in ms since its frame was sent)
    ages: Vec<(Duration, f64)>,
}

async fn one_stream(
    client: &mut Client,
    workload: &Workload,
    seed: usize,
    fps: f64,
    duration: Duration,
    started: Instant,
) -> anyhow::Result<StreamTally> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::StreamRequest {
        msg: Some(pb::stream_request::Msg::Config(pb::StreamConfig {
            texts: workload.labels.clone(),
            options: None,
            mode: pb::DeliveryMode::LatestOnly as i32,
            ..Default::default()
        })),
    })
    .await?;
    let sent_at = Arc::new(std::sync::Mutex::new(HashMap::<u64, Instant>::new()));
    let mut responses = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let sender = {
        let sent_at = Arc::clone(&sent_at);
        let frames: Vec<Vec<u8>> = workload.images.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / fps.max(0.1)));
            let mut id = 0u64;
            while started.elapsed() < duration {
                ticker.tick().await;
                sent_at.lock().expect("lock").insert(id, Instant::now());
                let frame = pb::Frame {
                    frame_id: id,
                    timestamp_us: started.elapsed().as_micros() as i64,
                    image: Some(pb::Image {
                        source: Some(pb::image::Source::Encoded(
                            frames[(seed + id as usize) % frames.len()].clone(),
                        )),
                    }),
                    ..Default::default()
                };
                if tx
                    .send(pb::StreamRequest {
                        msg: Some(pb::stream_request::Msg::Frame(frame)),
                    })
                    .await
                    .is_err()
                {
                    break;
                }
                id += 1;
            }
            id
        })
    };
    let mut tally = StreamTally {
        sent: 0,
        dropped: 0,
        ages: Vec::new(),
    };
    while let Some(response) = responses.message().await? {
        tally.dropped += response.skipped_frames;
        if let Some(at) = sent_at.lock().expect("lock").remove(&response.frame_id) {
            tally
                .ages
                .push((started.elapsed(), at.elapsed().as_secs_f64() * 1e3));
        }
    }
    tally.sent = sender.await?;
    Ok(tally)
}

/// `offered.len()` streams, stream i sending frames at `offered[i]` fps: each stream's results/s
/// between `warmup` and `warmup + window`.
async fn fair_share(
    client: &Client,
    workload: &Arc<Workload>,
    mode: FairMode,
    offered: Vec<f64>,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<FairReport> {
    let started = Instant::now();
    let tasks: Vec<_> = offered
        .iter()
        .enumerate()
        .map(|(s, &fps)| {
            let (client, workload) = (client.clone(), Arc::clone(workload));
            tokio::spawn(async move {
                fair_stream(
                    client,
                    &workload,
                    s,
                    fps,
                    mode,
                    started,
                    (warmup, warmup + window),
                )
                .await
            })
        })
        .collect();
    let mut results_per_s = Vec::new();
    for task in tasks {
        results_per_s.push(task.await?? as f64 / window.as_secs_f64());
    }
    Ok(FairReport::new(
        mode,
        offered,
        results_per_s,
        warmup,
        window,
    ))
}

/// One stream of the fair-share phase: its results (frames answered without an error) that
/// arrived between `count.0` and `count.1` after `started`. It stops sending at `count.1`.
async fn fair_stream(
    mut client: Client,
    workload: &Workload,
    seed: usize,
    fps: f64,
    mode: FairMode,
    started: Instant,
    count: (Duration, Duration),
) -> anyhow::Result<u64> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::StreamRequest {
        msg: Some(pb::stream_request::Msg::Config(pb::StreamConfig {
            texts: workload.labels.clone(),
            options: None,
            mode: mode.delivery() as i32,
            ..Default::default()
        })),
    })
    .await?;
    let mut responses = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let frames: Vec<Vec<u8>> = workload.images.clone();
    let sender = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / fps.max(0.1)));
        // Held back by backpressure (every-frame delivery), a stream goes on at its rate
        // rather than sending a burst to catch up.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut id = 0u64;
        while started.elapsed() < count.1 {
            ticker.tick().await;
            let frame = pb::Frame {
                frame_id: id,
                timestamp_us: started.elapsed().as_micros() as i64,
                image: Some(pb::Image {
                    source: Some(pb::image::Source::Encoded(
                        frames[(seed + id as usize) % frames.len()].clone(),
                    )),
                }),
                ..Default::default()
            };
            let request = pb::StreamRequest {
                msg: Some(pb::stream_request::Msg::Frame(frame)),
            };
            if tx.send(request).await.is_err() {
                break;
            }
            id += 1;
        }
    });
    let mut counted = 0;
    while let Some(response) = responses.message().await? {
        let at = started.elapsed();
        if response.error.is_none() && (count.0..count.1).contains(&at) {
            counted += 1;
        }
    }
    sender.await?;
    Ok(counted)
}

/// The vision tower alone, at `batch`, for `duration` (after warm-up): images/s, and ms per
/// pass from submitting it to its embeddings (staging the pixels not counted, as the server's
/// reported inference time does not count it). Passes are overlapped as the server's worker does
/// on a GPU (the next batch's pixels are copied while one runs), so this is the tower's own rate.
fn model_only(args: &ModelArgs, batch: usize, duration: Duration) -> anyhow::Result<(f64, f64)> {
    // Warmed up below, at this batch size only.
    let model = Model::load(&LoadOptions {
        warmup_rounds: 0,
        ..args.load_options(batch)
    })?;
    // Varied values in the normalised range: constant inputs can run faster than photos.
    let pixels: Vec<f32> = (0..pixels_per_image(model.preprocess()) * batch)
        .map(|i| (i * 7919 % 251) as f32 / 125.0 - 1.0)
        .collect();
    let rows: Vec<&[f32]> = pixels
        .chunks_exact(pixels_per_image(model.preprocess()))
        .collect();
    // Warm-up: the loop measured, for a tenth of the run and at least 5 passes. The optimising
    // executor profiles and compiles for each new shape during the first passes, which can stall
    // one of them for seconds; the server's own warm-up has paid that before it serves.
    passes(&model, &rows, duration / 10, 5)?;
    let run = passes(&model, &rows, duration, 1)?;
    Ok((
        run.images as f64 / run.elapsed.as_secs_f64(),
        run.in_model.as_secs_f64() * 1e3 / (run.images / batch) as f64,
    ))
}

struct Passes {
    images: usize,
    elapsed: Duration,
    /// Time in the model's submit and finish calls.
    in_model: Duration,
}

/// Passes over `rows` for at least `duration` and `min` passes, each staged while the one before
/// runs, as the server's worker does on a GPU.
fn passes(
    model: &Model,
    rows: &[&[f32]],
    duration: Duration,
    min: usize,
) -> anyhow::Result<Passes> {
    let started = Instant::now();
    let mut in_model = Duration::ZERO;
    let mut images = 0;
    let first = model.stage_rows(rows)?;
    let t = Instant::now();
    let mut running = model.submit(first)?;
    in_model += t.elapsed();
    while started.elapsed() < duration || images < min * rows.len() {
        let next = model.stage_rows(rows)?;
        let t = Instant::now();
        model.finish(running)?;
        running = model.submit(next)?;
        in_model += t.elapsed();
        images += rows.len();
    }
    let t = Instant::now();
    model.finish(running)?;
    in_model += t.elapsed();
    images += rows.len();
    Ok(Passes {
        images,
        elapsed: started.elapsed(),
        in_model,
    })
}

/// Peak resident set size of a process (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM:")
}

/// Resident set size of a process now (VmRSS), in MiB.
pub(super) fn resident_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS:")
}

/// A memory figure of `/proc/<pid>/status` (given in kB there), in MiB.
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}
