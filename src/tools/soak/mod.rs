//! `siglip-serve soak`: minutes of mixed legitimate traffic against a running server with abuse
//! mixed in, ending with one line:
//!
//! `soak: minutes=<n> requests=<n> errors_unexpected=<n> rss_start_mb=<f> rss_end_mb=<f> p99_ms=<f>`
//!
//! Legitimate callers, each on its own connection, take turns at every kind of call: Classify,
//! Upload in chunks, EmbedImage, EmbedText with labels never seen before, an every-frame stream
//! and a latest-only stream, both switching label sets midway. Every error they get is
//! unexpected. Abusers, each on its own connection, repeat attacks that the server must refuse or
//! end with a known status; any other outcome is unexpected too. `requests` counts the
//! legitimate calls (a stream is one), `p99_ms` is their latency (unary calls and Uploads).
//! `rss_start_mb` is the server's resident memory once the first minute (or the first fifth of a
//! shorter run) is over, when allocator pools and caches have grown; `rss_end_mb` is at the end:
//! memory that keeps growing under abuse shows as their difference.
//!
//! The legitimate calls are in `legitimate`, the attacks and the outcome that shows each one
//! contained in `abuse`; this module runs them and makes the report.

mod abuse;
mod legitimate;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use tonic::{transport::Channel, Status};

use super::client::{wait_until_ready, Bearer};
use super::stats::{percentiles, resident_mib};
use crate::grpc::pb::{self, siglip_client::SiglipClient};
use abuse::{abuse, Attack};
use legitimate::legitimate;

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// How long to run, in minutes.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Photos the legitimate callers send (cycled).
    #[arg(long, num_args = 1.., required = true)]
    pub images: Vec<PathBuf>,
    /// JSON list of label texts for Classify, Upload and streams.
    #[arg(long)]
    pub labels_file: PathBuf,
    /// Legitimate callers, each on its own connection.
    #[arg(long, default_value_t = 4)]
    pub callers: usize,
    /// Run the legitimate traffic alone.
    #[arg(long)]
    pub no_abuse: bool,
    /// The server's process id, for its resident memory.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// The figures of the final line.
#[derive(Debug, Default)]
pub struct Report {
    pub minutes: f64,
    pub requests: u64,
    pub errors_unexpected: u64,
    /// Attacks made, by kind.
    pub attacks: Vec<(String, u64)>,
    pub rss_start_mb: f64,
    pub rss_end_mb: f64,
    /// The server's resident memory from the start figure on, every tenth of the run.
    pub rss_mb: Vec<f64>,
    pub p99_ms: f64,
}

impl std::fmt::Display for Report {
    /// The attacks made, the server's memory over the run, then the summary (last, as `make soak` promises).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attacks: Vec<String> = self
            .attacks
            .iter()
            .map(|(a, n)| format!("{a}={n}"))
            .collect();
        writeln!(f, "attacks: {}", attacks.join(" "))?;
        let rss: Vec<String> = self.rss_mb.iter().map(|mb| format!("{mb:.0}")).collect();
        writeln!(f, "server rss_mb over the run: {}", rss.join(" "))?;
        write!(
            f,
            "soak: minutes={:.1} requests={} errors_unexpected={} rss_start_mb={:.1} rss_end_mb={:.1} p99_ms={:.1}",
            self.minutes,
            self.requests,
            self.errors_unexpected,
            self.rss_start_mb,
            self.rss_end_mb,
            self.p99_ms
        )
    }
}

/// What the callers share: the workload and the tally.
struct Soak {
    images: Vec<Vec<u8>>,
    labels: Vec<String>,
    ends_at: Instant,
    requests: AtomicU64,
    /// Rounds of each attack, in the order of [`Attack::ALL`].
    attacks: [AtomicU64; Attack::ALL.len()],
    unexpected: AtomicU64,
    latencies_ms: Mutex<Vec<f64>>,
    /// Unique label counter for EmbedText.
    fresh: AtomicU64,
}

/// Unexpected outcomes printed before the rest are only counted.
const PRINTED: u64 = 20;

impl Soak {
    fn running(&self) -> bool {
        Instant::now() < self.ends_at
    }

    fn unexpected(&self, what: &str) {
        let n = self.unexpected.fetch_add(1, Ordering::Relaxed);
        if n < PRINTED {
            println!("unexpected: {what}");
        }
    }

    fn image(&self, i: usize) -> Vec<u8> {
        self.images[i % self.images.len()].clone()
    }

    fn encoded(&self, i: usize) -> Option<pb::Image> {
        Some(pb::Image {
            source: Some(pb::image::Source::Encoded(self.image(i))),
        })
    }

    /// The label set for call `i`: the first half of the labels, or the second.
    fn label_set(&self, i: usize) -> Vec<String> {
        let half = self.labels.len().div_ceil(2);
        self.labels
            .chunks(half)
            .nth(i % 2)
            .unwrap_or(&self.labels)
            .to_vec()
    }
}

/// Runs the soak for `--minutes` and prints the report (its summary line last).
pub async fn run(args: SoakArgs) -> anyhow::Result<Report> {
    let images = args
        .images
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let labels: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&args.labels_file)?)
        .with_context(|| format!("{} must be a JSON list", args.labels_file.display()))?;
    anyhow::ensure!(
        labels.len() >= 2,
        "the labels file needs two labels or more"
    );
    let channel = connect(&args.addr).await?;
    wait_until_ready(&SiglipClient::with_interceptor(channel, Bearer::default())).await?;

    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let soak = Arc::new(Soak {
        images,
        labels,
        ends_at: Instant::now() + duration,
        requests: AtomicU64::new(0),
        attacks: Default::default(),
        unexpected: AtomicU64::new(0),
        latencies_ms: Mutex::new(Vec::new()),
        fresh: AtomicU64::new(0),
    });
    let mut tasks = Vec::new();
    for caller in 0..args.callers {
        let client = client(connect(&args.addr).await?);
        tasks.push(tokio::spawn(legitimate(Arc::clone(&soak), client, caller)));
    }
    if !args.no_abuse {
        for attack in Attack::ALL {
            let channel = connect(&args.addr).await?;
            tasks.push(tokio::spawn(abuse(Arc::clone(&soak), channel, attack)));
        }
    }

    let settled = (duration / 5).min(Duration::from_secs(60));
    tokio::time::sleep(settled).await;
    let rss = || args.server_pid.and_then(resident_mib).unwrap_or(0.0);
    let rss_start_mb = rss();
    // Ten samples from the start figure to the end, to tell a plateau from steady growth.
    let mut rss_mb = vec![rss_start_mb];
    let step = (duration - settled) / 10;
    while soak.running() {
        tokio::time::sleep(step.min(soak.ends_at.saturating_duration_since(Instant::now()))).await;
        rss_mb.push(rss());
    }
    for task in tasks {
        task.await.context("a soak task failed")?;
    }
    let rss_end_mb = rss();
    let latencies = std::mem::take(&mut *soak.latencies_ms.lock().expect("tally lock"));
    let report = Report {
        minutes: args.minutes,
        requests: soak.requests.load(Ordering::Relaxed),
        errors_unexpected: soak.unexpected.load(Ordering::Relaxed),
        attacks: Attack::ALL
            .iter()
            .zip(&soak.attacks)
            .map(|(a, n)| (format!("{a:?}"), n.load(Ordering::Relaxed)))
            .collect(),
        rss_start_mb,
        rss_end_mb,
        rss_mb,
        p99_ms: percentiles(latencies).p99,
    };
    println!("{report}");
    Ok(report)
}

/// A connection of its own.
async fn connect(addr: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(addr.to_owned())?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

fn client(channel: Channel) -> SiglipClient<Channel> {
    SiglipClient::new(channel).max_decoding_message_size(64 << 20)
}

/// A status as the soak reports it: code and message.
fn failed(status: Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
