//! `siglip-serve soak`: minutes of mixed legitimate traffic against a running server with abuse
//! mixed in, ending with one line:
//!
//! `soak: minutes=<n> requests=<n> errors_unexpected=<n> rss_start_mb=<f> rss_end_mb=<f> p99_ms=<f>`
//!
//! Legitimate callers, each on its own connection, take turns at every kind of call: Classify,
//! Upload in chunks, EmbedImage, EmbedText with labels never seen before, an every-frame stream
//! and a latest-only stream, both switching label sets midway. Every error they get is
//! unexpected. Abusers, each on its own connection, repeat attacks that the server must refuse or
//! end with a known status ([`Attack`]); any other outcome is unexpected too. `requests` counts
//! the legitimate calls (a stream is one), `p99_ms` is their latency (unary calls and Uploads).
//! `rss_start_mb` is the server's resident memory once the first minute (or the first fifth of a
//! shorter run) is over, when allocator pools and caches have grown; `rss_end_mb` is at the end:
//! memory that keeps growing under abuse shows as their difference.

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
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code, Status};

use super::attacks;
use super::bench::{percentiles, resident_mib, wait_until_ready};
use super::client::Bearer;
use crate::grpc::pb::{self, siglip_client::SiglipClient};

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
    Ok(Report {
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
    })
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

/// One legitimate caller: every kind of call in turn until the end.
async fn legitimate(soak: Arc<Soak>, mut client: SiglipClient<Channel>, caller: usize) {
    let mut i = caller;
    while soak.running() {
        let started = Instant::now();
        let (what, result, timed) = match i % 6 {
            0 => ("Classify", classify(&soak, &mut client, i).await, true),
            1 => ("Upload", upload(&soak, &mut client, i).await, true),
            2 => ("EmbedImage", embed_image(&soak, &mut client, i).await, true),
            3 => ("EmbedText", embed_text(&soak, &mut client).await, true),
            4 => (
                "every-frame Stream",
                stream(&soak, &mut client, pb::DeliveryMode::EveryFrame, i).await,
                false,
            ),
            _ => (
                "latest-only Stream",
                stream(&soak, &mut client, pb::DeliveryMode::LatestOnly, i).await,
                false,
            ),
        };
        soak.requests.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) if timed => soak
                .latencies_ms
                .lock()
                .expect("tally lock")
                .push(started.elapsed().as_secs_f64() * 1e3),
            Ok(()) => {}
            Err(why) => soak.unexpected(&format!("{what}: {why}")),
        }
        i += 1;
    }
}

type Outcome = Result<(), String>;

fn failed(status: Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

async fn classify(soak: &Soak, client: &mut SiglipClient<Channel>, i: usize) -> Outcome {
    let response = client
        .classify(pb::ClassifyRequest {
            image: soak.encoded(i),
            texts: soak.label_set(i),
            options: None,
        })
        .await
        .map_err(failed)?;
    check_scores(&response.into_inner().scores, soak.label_set(i).len())
}

async fn upload(soak: &Soak, client: &mut SiglipClient<Channel>, i: usize) -> Outcome {
    let image = soak.image(i);
    let mut messages = vec![pb::UploadRequest {
        msg: Some(pb::upload_request::Msg::Header(pb::UploadHeader {
            texts: soak.label_set(i),
            options: None,
            total_bytes: image.len() as u64,
        })),
    }];
    messages.extend(image.chunks(64 << 10).map(|c| pb::UploadRequest {
        msg: Some(pb::upload_request::Msg::Chunk(c.to_vec())),
    }));
    let response = client
        .upload(tokio_stream::iter(messages))
        .await
        .map_err(failed)?;
    check_scores(&response.into_inner().scores, soak.label_set(i).len())
}

async fn embed_image(soak: &Soak, client: &mut SiglipClient<Channel>, i: usize) -> Outcome {
    let response = client
        .embed_image(pb::EmbedImageRequest {
            images: vec![
                soak.encoded(i).expect("image"),
                soak.encoded(i + 1).expect("image"),
            ],
        })
        .await
        .map_err(failed)?;
    let n = response.into_inner().embeddings.len();
    (n == 2)
        .then_some(())
        .ok_or(format!("{n} embeddings for 2 images"))
}

/// Labels no one has sent before: the text tower runs for each.
async fn embed_text(soak: &Soak, client: &mut SiglipClient<Channel>) -> Outcome {
    let n = soak.fresh.fetch_add(1, Ordering::Relaxed);
    let texts: Vec<String> = (0..4)
        .map(|k| format!("a photo of thing {n} number {k}"))
        .collect();
    let response = client
        .embed_text(pb::EmbedTextRequest { texts })
        .await
        .map_err(failed)?;
    let n = response.into_inner().embeddings.len();
    (n == 4)
        .then_some(())
        .ok_or(format!("{n} embeddings for 4 texts"))
}

fn check_scores(scores: &[pb::LabelScore], labels: usize) -> Outcome {
    if scores.len() != labels {
        return Err(format!("{} scores for {labels} labels", scores.len()));
    }
    if scores.iter().any(|s| !(0.0..=1.0).contains(&s.probability)) {
        return Err("a probability outside [0, 1]".into());
    }
    Ok(())
}

/// Frames sent on each legitimate stream: half under one label set, half under the other.
const FRAMES: u64 = 8;

/// A stream that switches label sets after half its frames. Every frame must be answered in order
/// (every-frame), or at least the last one (latest-only), without an in-band error.
async fn stream(
    soak: &Soak,
    client: &mut SiglipClient<Channel>,
    mode: pb::DeliveryMode,
    i: usize,
) -> Outcome {
    let config = |i: usize| pb::StreamRequest {
        msg: Some(pb::stream_request::Msg::Config(pb::StreamConfig {
            texts: soak.label_set(i),
            options: None,
            mode: mode as i32,
            ..Default::default()
        })),
    };
    let mut messages = vec![config(i)];
    for id in 0..FRAMES {
        if id == FRAMES / 2 {
            messages.push(config(i + 1));
        }
        messages.push(pb::StreamRequest {
            msg: Some(pb::stream_request::Msg::Frame(pb::Frame {
                frame_id: id,
                timestamp_us: id as i64 * 33_000,
                image: soak.encoded(i + id as usize),
                ..pb::Frame::default()
            })),
        });
    }
    let mut responses = client
        .stream(tokio_stream::iter(messages))
        .await
        .map_err(failed)?
        .into_inner();
    let mut ids = Vec::new();
    while let Some(response) = responses.next().await {
        let response = response.map_err(failed)?;
        if let Some(e) = response.error {
            return Err(format!("frame {}: {}", response.frame_id, e.message));
        }
        ids.push(response.frame_id);
    }
    let complete = match mode {
        pb::DeliveryMode::LatestOnly => ids.last() == Some(&(FRAMES - 1)),
        _ => ids == (0..FRAMES).collect::<Vec<_>>(),
    };
    complete
        .then_some(())
        .ok_or(format!("frames answered: {ids:?}"))
}

/// The attacks mixed into the soak, each with the statuses that contain it.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// A progressive JPEG made of thousands of empty scans.
    ScanBomb,
    /// A PNG whose compressed metadata inflates far past the decoder's memory limit.
    MetadataBomb,
    /// A label that is not UTF-8.
    NotUtf8,
    /// A message over the message limit.
    Oversized,
    /// A Stream that opens and sends nothing.
    SilentStream,
    /// A Stream that sends frames and never reads its results.
    DeafStream,
    /// An Upload that stops one byte short and stalls.
    StalledUpload,
}

impl Attack {
    const ALL: [Attack; 7] = [
        Attack::ScanBomb,
        Attack::MetadataBomb,
        Attack::NotUtf8,
        Attack::Oversized,
        Attack::SilentStream,
        Attack::DeafStream,
        Attack::StalledUpload,
    ];

    /// What shows that the server contained the attack.
    fn contained(self) -> Contained {
        match self {
            Attack::ScanBomb | Attack::NotUtf8 => Contained::Refused(&[Code::InvalidArgument]),
            Attack::Oversized => Contained::Refused(&[Code::ResourceExhausted]),
            Attack::SilentStream | Attack::StalledUpload => Contained::Refused(attacks::IDLE_CODES),
            // Inflated only up to --max-image-bytes, the profile dropped: a bounded cost.
            Attack::MetadataBomb => Contained::Answered,
            // The client never reads, so it never hears why; the server must end the stream
            // (lifetime, or a send that cannot make progress) and free its slot, which the
            // legitimate streams would miss otherwise.
            Attack::DeafStream => Contained::Unobserved,
        }
    }
}

/// How an attack must end.
enum Contained {
    /// With one of these statuses.
    Refused(&'static [Code]),
    /// Answered like any image, its cost bounded (memory shows in the RSS figures).
    Answered,
    /// Nothing the attacker can see.
    Unobserved,
}

/// Pause between two rounds of one attack.
const ATTACK_PAUSE: Duration = Duration::from_millis(500);

async fn abuse(soak: Arc<Soak>, channel: Channel, attack: Attack) {
    let mut client = client(channel.clone());
    while soak.running() {
        let outcome = match attack {
            Attack::ScanBomb => attacks::classify_bytes(&mut client, attacks::scan_bomb()).await,
            Attack::MetadataBomb => {
                attacks::classify_bytes(&mut client, attacks::metadata_bomb()).await
            }
            Attack::NotUtf8 => attacks::not_utf8_label(channel.clone()).await,
            Attack::Oversized => attacks::classify_bytes(&mut client, vec![0xff; 5 << 20]).await,
            Attack::SilentStream => attacks::silent_stream(&mut client).await,
            Attack::DeafStream => attacks::deaf_stream(&mut client, soak.image(0)).await,
            Attack::StalledUpload => attacks::stalled_upload(&mut client).await,
        };
        soak.attacks[attack as usize].fetch_add(1, Ordering::Relaxed);
        let as_expected = match (attack.contained(), &outcome) {
            (Contained::Refused(codes), Err(status)) => codes.contains(&status.code()),
            (Contained::Answered | Contained::Unobserved, Ok(())) => true,
            _ => false,
        };
        if !as_expected {
            let got = outcome.map_or_else(failed, |()| "accepted".to_owned());
            soak.unexpected(&format!("{attack:?}: {got}"));
        }
        tokio::time::sleep(ATTACK_PAUSE).await;
    }
}
