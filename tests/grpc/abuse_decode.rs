//! Abuse of decoding and of text work: while hostile callers run, a well-behaved caller on its
//! own connection is answered within a stated bound, the hostile calls get their documented
//! status at once, server memory stays within a stated bound, and the server stays up.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    Arc,
};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tonic::Code;

use super::*;
use siglip_serve::tools::attacks::progressive_jpeg_of_empty_scans;

use crate::common::{
    self,
    server::{time_well_behaved, well_behaved, Sampler, Server},
};
use crate::transport::under_attack;

/// The slowest of `calls` well-behaved calls ([`well_behaved`]: cached labels) on `client`.
async fn slowest_of(client: &mut SiglipClient<Channel>, calls: usize) -> Duration {
    common::slowest_of(calls, async || {
        time_well_behaved(&mut *client).await;
    })
    .await
}

/// The bound on the well-behaved caller in the large-image test: twice its idle latency, but at
/// least 250 ms (the tiny model answers in a few ms, below a loaded machine's scheduling noise).
fn bound(idle: Duration) -> Duration {
    (idle * 2).max(Duration::from_millis(250))
}

/// One call of a looping caller of [`Load`].
type Call = fn(&mut SiglipClient<Channel>) -> BoxFuture<'_, ()>;

/// Benign callers, each on a connection of its own, each making `call` over and over: the load
/// an attack is compared with.
struct Load {
    stop: Arc<AtomicBool>,
    callers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `callers` callers of `call`; returns once each has been answered once.
    async fn start(server: &Server, callers: usize, call: Call) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let mut client = server.client().await;
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    call(&mut client).await;
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        common::wait_until("every benign caller answered once", async || {
            answered.load(Ordering::Relaxed) >= callers
        })
        .await;
        Load {
            stop,
            callers: tasks,
        }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for caller in self.callers {
            caller.await.expect("a benign caller");
        }
    }
}

/// Memory the server may grow by while the attack runs.
const RSS_GROWTH_BOUND: u64 = 150 << 20;

/// The attack: 0.5 MB progressive JPEGs of 4000×4000 pixels and ~14,000 empty scans,
/// ~10 s of decoding each, two at a time. Refused from their markers (INVALID_ARGUMENT),
/// they cost the server nothing: the well-behaved caller is held to [`under_attack`] of its
/// latency while two benign callers loop on small valid images (measured just before), so that
/// what a busy machine costs everyone is not blamed on the attack, while one hostile JPEG decoded
/// in full would cost seconds.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_progressive_jpegs_are_refused_while_others_are_served() {
    const ATTACKERS: usize = 2;
    let server = Server::ready(&[]).await;
    let hostile = progressive_jpeg_of_empty_scans(4000, 4000, 14_000);
    assert!(
        (300_000..1_000_000).contains(&hostile.len()),
        "{}",
        hostile.len()
    );

    let mut good = server.client().await;
    slowest_of(&mut good, 1).await; // labels cached, model warm
    let benign = Load::start(&server, ATTACKERS, |client| {
        Box::pin(async move {
            client
                .classify(well_behaved())
                .await
                .expect("a benign caller is served");
        })
    })
    .await;
    let loaded = slowest_of(&mut good, 5).await;
    benign.stop().await;
    let rss_before = server.rss();

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let attacking = Arc::new(Notify::new());
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        let mut client = server.client().await;
        let (hostile, stop, refused, attacking) = (
            hostile.clone(),
            Arc::clone(&stop),
            Arc::clone(&refused),
            Arc::clone(&attacking),
        );
        attackers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let status = client
                    .classify(classify_request(hostile.clone(), labels()))
                    .await
                    .expect_err("a hostile JPEG is refused");
                assert_status(
                    "hostile JPEG",
                    &status,
                    Code::InvalidArgument,
                    "--max-jpeg-scans",
                );
                refused.fetch_add(1, Ordering::Relaxed);
                attacking.notify_one();
            }
        }));
    }
    attacking.notified().await;
    let attacked = slowest_of(&mut good, 5).await;
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        attacker.await.expect("attacker");
    }
    let stated = under_attack(loaded);
    eprintln!(
        "hostile JPEGs: well-behaved {attacked:?} under attack, {loaded:?} beside benign callers"
    );
    assert!(
        attacked <= stated,
        "well-behaved caller took {attacked:?} under attack, {loaded:?} beside {ATTACKERS} benign \
         callers (bound {stated:?})"
    );
    let growth = server.rss().saturating_sub(rss_before);
    assert!(growth < RSS_GROWTH_BOUND, "server grew by {growth} bytes");
    assert!(refused.load(Ordering::Relaxed) >= 2);
    assert_eq!(
        server.health("").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

/// 32 texts of 2048 bytes (the most a request may send here), told apart by `tag`.
fn long_texts(tag: &str) -> Vec<String> {
    (0..32)
        .map(|i| {
            let head = format!("label {tag} {i} ");
            head.clone() + &"x".repeat(2048 - head.len())
        })
        .collect()
}

/// A flood of unique, maximum-length labels from several callers: text work past
/// `--max-pending-texts` is refused at once (RESOURCE_EXHAUSTED) rather than queued without
/// bound, and an image with cached labels is still answered within the bound.
///
/// The bound: [`under_attack`] of the image's latency while as many benign callers loop on long
/// texts that are cached (the flood's bytes on the wire, answered from the cache; measured just
/// before), plus the text work that can run ahead of it: the `--max-pending-texts` /
/// `--max-texts` requests of new texts the budget admits at once, and one more (admitted as the
/// one running ends, it can join the image's batch, and a batch runs its texts before its
/// images), each as long as the longest the server reports for the flood's own (the text tower
/// under the flood's load). Text work queued without bound would pass it by the flood's backlog.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_unique_labels_is_refused_past_its_budget_while_images_are_served() {
    const FLOODERS: usize = 6;
    const MAX_TEXTS: usize = 32;
    const PENDING_TEXTS: usize = 64;
    let server = Server::ready(&[
        "--max-texts",
        &MAX_TEXTS.to_string(),
        "--max-pending-texts",
        &PENDING_TEXTS.to_string(),
    ])
    .await;
    let mut good = server.client().await;
    slowest_of(&mut good, 1).await;
    // The benign callers' texts, cached: the same bytes on the wire as the flood's, answered from
    // the cache.
    good.embed_text(pb::EmbedTextRequest {
        model: String::new(),
        texts: long_texts("cached"),
    })
    .await
    .expect("the benign callers' texts cached");
    let benign = Load::start(&server, FLOODERS, |client| {
        Box::pin(async move {
            client
                .embed_text(pb::EmbedTextRequest {
                    model: String::new(),
                    texts: long_texts("cached"),
                })
                .await
                .expect("a benign caller is served");
        })
    })
    .await;
    let loaded = slowest_of(&mut good, 5).await;
    benign.stop().await;
    let rss_before = server.rss();

    let stop = Arc::new(AtomicBool::new(false));
    let (served, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // The longest text-tower job among the flood's, in µs, as the server reports it.
    let longest = Arc::new(AtomicU64::new(0));
    let flooding = Arc::new(Notify::new());
    let flood = server.client().await;
    let mut flooders = Vec::new();
    for task in 0..FLOODERS {
        let mut client = flood.clone();
        let (stop, served, refused, flooding, longest) = (
            Arc::clone(&stop),
            Arc::clone(&served),
            Arc::clone(&refused),
            Arc::clone(&flooding),
            Arc::clone(&longest),
        );
        flooders.push(tokio::spawn(async move {
            let mut round = 0;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let texts = long_texts(&format!("{task} {round}"));
                match client
                    .embed_text(pb::EmbedTextRequest {
                        model: String::new(),
                        texts,
                    })
                    .await
                {
                    Ok(reply) => {
                        let job = reply.into_inner().timings.expect("timings").inference_us;
                        longest.fetch_max(job, Ordering::Relaxed);
                        served.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(status) => {
                        assert_status(
                            "text flood",
                            &status,
                            Code::ResourceExhausted,
                            "--max-pending-texts",
                        );
                        flooding.notify_one();
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    flooding.notified().await;
    let flooded = slowest_of(&mut good, 5).await;
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await.expect("flooder");
    }
    assert!(refused.load(Ordering::Relaxed) >= 1);
    assert!(
        served.load(Ordering::Relaxed) >= 1,
        "the flood is served up to its budget"
    );
    let longest = Duration::from_micros(longest.load(Ordering::Relaxed));
    let ahead = (PENDING_TEXTS / MAX_TEXTS) as u32 + 1;
    let stated = under_attack(loaded) + longest * ahead;
    eprintln!(
        "text flood: well-behaved {flooded:?} under the flood, {loaded:?} beside benign callers, \
         a flood job {longest:?} at most"
    );
    assert!(
        flooded <= stated,
        "well-behaved caller took {flooded:?} under the flood, {loaded:?} beside {FLOODERS} \
         benign callers; a flood request's text job took {longest:?} at most (bound {stated:?})"
    );
    let growth = server.rss().saturating_sub(rss_before);
    assert!(growth < RSS_GROWTH_BOUND, "server grew by {growth} bytes");
    assert_eq!(server.metric("siglip_pending_texts").await, 0.0);
}

/// A smooth `side`×`side` JPEG: small to send, a full decode's work to receive.
pub(crate) fn large_jpeg(side: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    encode(&img, image::ImageFormat::Jpeg)
}

/// A server whose decode budget (`--max-decoding-pixels`) is one large image, with threads to
/// decode more at once; that image; a well-behaved caller, warm, with its idle latency, one
/// large image's Classify time and the server's memory, measured in the same run before an
/// attack.
pub(crate) struct PixelBudget {
    pub(crate) server: Server,
    pub(crate) large: Vec<u8>,
    good: SiglipClient<Channel>,
    idle: Duration,
    alone: Duration,
    rss_before: u64,
}

impl PixelBudget {
    const PIXELS: u64 = 3000 * 3000;

    pub(crate) async fn start(threads: usize) -> Self {
        let budget = Self::PIXELS.to_string();
        let server = Server::ready(&[
            "--preprocess-threads",
            &threads.to_string(),
            "--max-image-pixels",
            &budget,
            "--max-decoding-pixels",
            &budget,
        ])
        .await;
        let large = large_jpeg(3000);
        let mut good = server.client().await;
        slowest_of(&mut good, 1).await;
        let idle = slowest_of(&mut good, 3).await;
        let started = Instant::now();
        good.classify(classify_request(large.clone(), labels()))
            .await
            .expect("a large image alone");
        let alone = started.elapsed();
        let rss_before = server.rss();
        Self {
            server,
            large,
            good,
            idle,
            alone,
            rss_before,
        }
    }

    /// While `attackers` send large images (until `stop`), times the well-behaved caller once
    /// the first is decoding, then stops them and holds the server to the budget: one large
    /// image decoding at a time (sampled every few milliseconds), the caller within its idle
    /// bound plus the `queued` large images that can be ahead of it, memory within
    /// [`RSS_GROWTH_BOUND`], nothing left decoding.
    pub(crate) async fn hold(
        mut self,
        attack: &str,
        queued: u32,
        stop: &AtomicBool,
        attackers: Vec<tokio::task::JoinHandle<()>>,
    ) {
        let sampler = Sampler::start(&self.server.metrics_addr, "siglip_decoding_pixels");
        common::wait_until("large images decoding", async || {
            self.server.metric("siglip_decoding_pixels").await > 0.0
        })
        .await;
        let attacked = slowest_of(&mut self.good, 5).await;
        stop.store(true, Ordering::Relaxed);
        for attacker in attackers {
            attacker.await.expect("attacker");
        }
        let most_decoding = sampler.most().await;
        let growth = self.server.rss().saturating_sub(self.rss_before);
        let (idle, alone) = (self.idle, self.alone);
        eprintln!(
            "pixel budget, {attack}: idle {idle:?}, large image alone {alone:?}, well-behaved \
             under attack {attacked:?}, at most {most_decoding} pixels decoding, rss growth {} MB",
            growth >> 20
        );
        assert_eq!(
            most_decoding,
            Self::PIXELS as f64,
            "pixels in decoding at most: one large image at a time"
        );
        let stated = bound(idle) + alone * queued;
        assert!(
            attacked <= stated,
            "well-behaved caller took {attacked:?} under attack (bound {stated:?}: idle {idle:?}, \
             one large image alone {alone:?})"
        );
        assert!(growth < RSS_GROWTH_BOUND, "server grew by {growth} bytes");
        assert_eq!(self.server.metric("siglip_decoding_pixels").await, 0.0);
    }
}

/// Large but legal images from several callers at once, with decode threads to spare: each is
/// charged its header's pixels against `--max-decoding-pixels` before it decodes, so no more
/// than the budget decodes at once (here one image; without the budget, four), and memory stays
/// bounded by it. The rest wait their turn in line: a well-behaved caller waits behind at most
/// one large decode per attacker, the bound stated below.
#[tokio::test]
async fn large_images_decode_within_the_pixel_budget_while_others_are_served() {
    const ATTACKERS: u32 = 4;
    let budget = PixelBudget::start(ATTACKERS as usize).await;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        let mut client = budget.server.client().await;
        let (large, stop, served) = (budget.large.clone(), Arc::clone(&stop), Arc::clone(&served));
        attackers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                client
                    .classify(classify_request(large.clone(), labels()))
                    .await
                    .expect("a legal image is served, in its turn");
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    budget.hold("Classify", ATTACKERS, &stop, attackers).await;
    assert!(served.load(Ordering::Relaxed) >= ATTACKERS as usize);
}
