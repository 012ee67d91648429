//! The inference queue: every caller gets exactly its own rows, dead callers never block or
//! receive, deadlines drop work, a full queue refuses at once, a failed pass fails only its own
//! callers — with the worker overlapping batches (as on a GPU) and without; the images admitted
//! at once are bounded.

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use siglip_serve::batch::{BatchConfig, Batcher};
use siglip_serve::error::Error;
use siglip_serve::infer::{ImageInput, Infer};
use siglip_serve::model::{
    image::{decode, Convention, ImageLimits},
    pixels_per_image,
    scores::Embeddings,
    Model,
};

fn model() -> Model {
    common::cpu_model("SIGLIP_TEST_MODEL_DIR")
}

/// Preprocessed pixels of every test photo, and their embeddings computed one at a time.
fn photos(model: &Model) -> Vec<(Vec<f32>, Embeddings)> {
    let dir = common::generated("SIGLIP_TEST_ASSETS").join("images");
    [
        "chelsea_progressive.jpg",
        "rocket.bmp",
        "coffee_rgb8.png",
        "astronaut_baseline.jpg",
        "chelsea.gif",
    ]
    .iter()
    .map(|name| {
        let rgb = decode(
            &std::fs::read(dir.join(name)).unwrap(),
            &ImageLimits::default(),
            Convention::Processor,
        )
        .unwrap();
        let pixels = siglip_serve::model::image::preprocess(&rgb, model.preprocess());
        let alone = model.embed_pixels(&pixels, 1).unwrap();
        (pixels, alone)
    })
    .collect()
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(max < 1e-5, "rows differ by {max}");
}

fn config(max_batch_size: usize, delay_ms: u64, queue: usize) -> BatchConfig {
    BatchConfig {
        max_batch_size,
        max_batch_delay: Duration::from_millis(delay_ms),
        queue_capacity: queue,
        pipelined: false,
    }
}

/// `config` for the worker as it runs on the CPU, and as on a GPU, where the next batch is
/// prepared while one is in flight (on the CPU the pass itself is synchronous, but the order of
/// staging, answering and submitting is the same).
fn both_modes(config: BatchConfig) -> [BatchConfig; 2] {
    [
        config,
        BatchConfig {
            pipelined: true,
            ..config
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_get_their_own_rows() {
    // With no delay, batches form from whatever waits while the previous one runs.
    for config in [both_modes(config(4, 50, 64)), both_modes(config(4, 0, 64))].concat() {
        own_rows(config).await;
    }
}

async fn own_rows(config: BatchConfig) {
    let model = model();
    let photos = photos(&model);
    let texts = ["a cat", "a rocket", "", "a cup of coffee on a table"];
    let text_alone: Vec<Embeddings> = texts
        .iter()
        .map(|t| model.embed_texts(&[*t]).unwrap())
        .collect();
    let tokens: Vec<_> = texts
        .iter()
        .map(|t| model.tokenize(&[*t]).unwrap())
        .collect();
    let per_image = pixels_per_image(model.preprocess());
    // A batch of 4 (with a long delay, concurrent callers are batched together), and one caller
    // with more rows than a batch is split over several forward passes.
    let (batcher, worker) = Batcher::start(model, config);

    let mut calls = Vec::new();
    for round in 0..3 {
        for (i, (pixels, alone)) in photos.iter().enumerate() {
            let batcher = batcher.clone();
            let (pixels, alone) = (pixels.clone(), alone.clone());
            calls.push(tokio::spawn(async move {
                let reply = batcher
                    .embed_images(vec![pixels], None)
                    .await
                    .expect("images");
                assert_eq!(reply.embeddings.len(), 1, "round {round} photo {i}");
                assert_close(&reply.embeddings.data, &alone.data);
            }));
        }
        for (ids, alone) in tokens.iter().zip(&text_alone) {
            let batcher = batcher.clone();
            let (ids, alone) = (ids.clone(), alone.clone());
            calls.push(tokio::spawn(async move {
                let reply = batcher.embed_texts(ids, None).await.expect("texts");
                assert_close(&reply.embeddings.data, &alone.data);
            }));
        }
    }
    // One caller with all five photos at once (more than one batch).
    let all: Vec<Vec<f32>> = photos.iter().map(|(p, _)| p.clone()).collect();
    assert!(all.iter().all(|p| p.len() == per_image));
    let reply = batcher.embed_images(all, None).await.expect("five at once");
    for (i, (_, alone)) in photos.iter().enumerate() {
        assert_close(reply.embeddings.row(i), &alone.data);
    }
    for call in calls {
        call.await.expect("caller");
    }
    stop(batcher, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_cancelled_callers_are_dropped_and_block_no_one() {
    // No batch delay, so that the long job's batch below closes at once and the six queue.
    for config in both_modes(config(8, 0, 64)) {
        dropped_callers(config).await;
    }
}

async fn dropped_callers(config: BatchConfig) {
    let tiny = model();
    let photos = photos(&tiny);
    let (pixels, alone) = photos[0].clone();
    let (batcher, worker) = Batcher::start(tiny, config);

    let past = Instant::now() - Duration::from_millis(1);
    match batcher.embed_images(vec![pixels.clone()], Some(past)).await {
        Err(Error::DeadlineExceeded(msg)) => {
            assert!(msg.contains("dropped before inference"), "{msg}")
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }

    // Callers that give up while they wait: a long job (256 images) keeps the worker busy while
    // six callers queue behind it and then go away. The next caller's pass must hold its row
    // alone: had the six been run, they would share its batch.
    let mut busy = Box::pin(batcher.embed_images(vec![pixels.clone(); 256], None));
    // One poll queues the long job (the worker runs it whether or not it is polled again);
    // the six queue once the worker has taken it.
    assert!(futures_util::poll!(&mut busy).is_pending());
    common::wait_until("the worker taking the long job", async || {
        batcher.depth() == 0
    })
    .await;
    let quitters: Vec<_> = (0..6)
        .map(|_| {
            let batcher = batcher.clone();
            let pixels = pixels.clone();
            tokio::spawn(async move { batcher.embed_images(vec![pixels], None).await })
        })
        .collect();
    common::wait_until("six callers queueing", async || batcher.depth() == 6).await;
    for q in &quitters {
        q.abort();
    }
    for q in quitters {
        assert!(q.await.unwrap_err().is_cancelled());
    }
    let stayer = {
        let batcher = batcher.clone();
        let pixels = pixels.clone();
        tokio::spawn(async move { batcher.embed_images(vec![pixels], None).await })
    };
    let reply = tokio::time::timeout(Duration::from_secs(30), stayer)
        .await
        .expect("the remaining caller is not blocked")
        .expect("join")
        .expect("reply");
    assert_close(&reply.embeddings.data, &alone.data);
    assert_eq!(
        reply.batch_size, 1,
        "the callers that went away were run with it"
    );
    busy.await.expect("the long job is served");
    assert_eq!(batcher.depth(), 0);
    stop(batcher, worker).await;
}

/// Starts embedding `images` and returns once they are admitted (counted as pending).
async fn admitted(
    infer: &Arc<Infer>,
    images: Vec<ImageInput>,
) -> tokio::task::JoinHandle<Result<usize, Error>> {
    let n = images.len();
    let call = tokio::spawn({
        let infer = Arc::clone(infer);
        async move {
            let (embeddings, _) = infer.embed_images(images, None).await?;
            Ok(embeddings.rows().count())
        }
    });
    common::wait_until("the images being admitted", async || {
        infer.pending_images() == n
    })
    .await;
    call
}

/// Ends a test's inference thread: drops `queue` (the last handle to its queue: a `Batcher`,
/// or the `Infer` that owns it) and waits for the thread to exit, so that no libtorch work is
/// still running when the test binary exits (libtorch's static destructors under a running
/// thread crash the process now and then).
async fn stop(queue: impl Sized, worker: std::thread::JoinHandle<()>) {
    drop(queue);
    common::wait_until("the inference thread ending", async || worker.is_finished()).await;
    worker.join().expect("the inference thread ended cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pass_answers_its_callers_and_the_worker_goes_on() {
    // The compiled tiny tower takes at most 8 images per pass: a pass of 9 fails in the model.
    let nine = |photos: &[(Vec<f32>, Embeddings)]| {
        (0..9).map(|i| photos[i % photos.len()].0.clone()).collect()
    };
    fails_then_serves("SIGLIP_TEST_AOTI_MODEL_DIR", nine, "at most 8").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_worker_fails_its_batch_and_the_worker_goes_on() {
    // A row of the wrong length trips an assertion while it is staged: a panic.
    let short_row = |_: &[(Vec<f32>, Embeddings)]| vec![vec![0.5; 7]];
    fails_then_serves("SIGLIP_TEST_MODEL_DIR", short_row, "dropped").await;
}

/// In both worker modes: the rows `bad` makes fail with an inference error that mentions
/// `needle`, then the next caller is served and the worker is still running.
async fn fails_then_serves(
    model_var: &str,
    bad: impl Fn(&[(Vec<f32>, Embeddings)]) -> Vec<Vec<f32>>,
    needle: &str,
) {
    for config in both_modes(config(16, 0, 64)) {
        let model = common::cpu_model(model_var);
        let photos = photos(&model);
        let (batcher, worker) = Batcher::start(model, config);
        match batcher.embed_images(bad(&photos), None).await {
            Err(Error::Inference(message)) => assert!(message.contains(needle), "{message}"),
            other => panic!(
                "expected an inference error, got {:?}",
                other.map(|r| r.batch_size)
            ),
        }
        let (pixels, alone) = photos[1].clone();
        let reply = batcher
            .embed_images(vec![pixels], None)
            .await
            .expect("the next caller is served");
        assert_close(&reply.embeddings.data, &alone.data);
        assert!(!worker.is_finished());
        stop(batcher, worker).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let model = model();
    let photos = photos(&model);
    let (batcher, worker) = Batcher::start(model, config(1, 0, 1));
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let batcher = batcher.clone();
            let pixels = photos[i % photos.len()].0.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                (
                    batcher.embed_images(vec![pixels], None).await,
                    started.elapsed(),
                )
            })
        })
        .collect();
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            (Ok(_), _) => {}
            (Err(Error::ResourceExhausted(msg)), _) => {
                assert!(msg.contains("--max-queue"), "{msg}");
                refused += 1;
            }
            (Err(e), _) => panic!("unexpected {e}"),
        }
    }
    assert!(
        refused > 0,
        "a queue of one accepted twelve concurrent callers"
    );
    stop(batcher, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_size_and_delay() {
    let model = model();
    let photos = photos(&model);
    // A lone caller is answered once the delay is over, in a batch of one.
    let (batcher, worker) = Batcher::start(model, config(8, 30, 64));
    let alone = batcher
        .embed_images(vec![photos[0].0.clone()], None)
        .await
        .unwrap();
    assert_eq!(alone.batch_size, 1);
    // Many at once: batched together, never more than max_batch_size rows per forward pass.
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let batcher = batcher.clone();
            let pixels = photos[i % photos.len()].0.clone();
            tokio::spawn(async move {
                batcher
                    .embed_images(vec![pixels], None)
                    .await
                    .unwrap()
                    .batch_size
            })
        })
        .collect();
    let mut sizes = Vec::new();
    for call in calls {
        sizes.push(call.await.unwrap());
    }
    assert!(sizes.iter().all(|&s| (1..=8).contains(&s)), "{sizes:?}");
    assert!(
        sizes.iter().any(|&s| s > 1),
        "concurrent callers were never batched: {sizes:?}"
    );
    stop(batcher, worker).await;
}

/// An `Infer` (the core behind the API) over the tiny model, with a text cache of `capacity` and
/// the limit flags `limit_flags`, and its inference thread.
fn core(capacity: usize, limit_flags: &[&str]) -> (Infer, std::thread::JoinHandle<()>) {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: siglip_serve::config::LimitArgs,
    }
    let model = model();
    let host = model.host_side();
    let (batcher, worker) = Batcher::start(model, config(8, 1, 64));
    let limits =
        Flags::parse_from(std::iter::once("test").chain(limit_flags.iter().copied())).limits;
    let core = siglip_serve::infer::Config {
        limits: limits.core(),
        convention: Convention::Processor,
        preprocess_threads: 1,
        text_cache_size: capacity,
    };
    let infer = Infer::new(batcher, host, core);
    (infer, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_images_are_bounded_and_given_back() {
    let (infer, worker) = core(16, &["--max-pending-images", "3"]);
    let infer = Arc::new(infer);
    let photo = common::asset("coffee_2000x1500.jpg");
    let images = |n: usize| vec![ImageInput::Encoded(photo.clone()); n];
    let refused = |result: Result<_, Error>| match result {
        Err(Error::ResourceExhausted(m)) => assert!(m.contains("--max-pending-images"), "{m}"),
        Err(e) => panic!("expected RESOURCE_EXHAUSTED, got {e}"),
        Ok(_) => panic!("expected RESOURCE_EXHAUSTED, got embeddings"),
    };
    refused(infer.embed_images(images(4), None).await);
    assert_eq!(infer.pending_images(), 0);

    // Two large photos being decoded (one decoder thread) leave room for one more, not two.
    let first = admitted(&infer, images(2)).await;
    refused(infer.embed_images(images(2), None).await);
    first.await.unwrap().expect("the first request is served");
    assert_eq!(infer.pending_images(), 0);

    // A caller that goes away gives its images back.
    let gone = admitted(&infer, images(3)).await;
    gone.abort();
    let _ = gone.await;
    assert_eq!(infer.pending_images(), 0);
    let (embeddings, _) = infer.embed_images(images(3), None).await.expect("served");
    assert_eq!(embeddings.rows().count(), 3);
    stop(infer, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_cache_hits_misses_and_bound() {
    let (infer, worker) = core(3, &[]);
    let texts = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (first, _) = infer
        .labels(texts(&["a cat", "a dog"]), None)
        .await
        .unwrap();
    let stats = infer.text_cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (0, 2, 2));

    // "A CAT!" tokenises like "a cat" (lowercased, punctuation removed): the same entry.
    let (again, _) = infer
        .labels(texts(&["a dog", "A CAT!", "a cat"]), None)
        .await
        .unwrap();
    let stats = infer.text_cache_stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (3, 2, 2));
    assert_eq!(again.embeddings.row(0), first.embeddings.row(1));
    assert_eq!(again.embeddings.row(1), first.embeddings.row(0));
    assert_eq!(again.embeddings.row(2), first.embeddings.row(0));

    // Duplicates in one request are embedded once; the cache never exceeds its capacity.
    infer
        .labels(texts(&["a bird", "a bird", "a car", "a boat"]), None)
        .await
        .unwrap();
    let stats = infer.text_cache_stats();
    assert_eq!(
        stats.misses,
        2 + 4,
        "each text is looked up once per occurrence"
    );
    assert_eq!(stats.entries, 3);
    stop(infer, worker).await;

    let (off, worker) = core(0, &[]);
    off.labels(texts(&["a cat"]), None).await.unwrap();
    off.labels(texts(&["a cat"]), None).await.unwrap();
    let stats = off.text_cache_stats();
    assert_eq!((stats.hits, stats.entries), (0, 0));
    stop(off, worker).await;
}
