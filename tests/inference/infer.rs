//! The core behind the API (`Infer`): the images it admits at once are bounded and given back,
//! and texts are embedded once and then served from a bounded cache.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use siglip_serve::batch::BatchConfig;
use siglip_serve::error::Error;
use siglip_serve::infer::{ImageInput, Infer};
use siglip_serve::model::image::{Convention, ImageLimits, Preprocess};

use crate::{common, config, model, stop};

/// An `Infer` (the core behind the API) over the tiny model, with a text cache of `capacity` and
/// the limit flags `limit_flags`, and its inference thread.
fn core(capacity: usize, limit_flags: &[&str]) -> (Infer, std::thread::JoinHandle<()>) {
    core_batching(config(8, 1, 64), capacity, limit_flags)
}

/// [`core`] with the batcher configured by `batching`.
fn core_batching(
    batching: BatchConfig,
    capacity: usize,
    limit_flags: &[&str],
) -> (Infer, std::thread::JoinHandle<()>) {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        limits: siglip_serve::config::LimitArgs,
    }
    let model = model();
    let host = model.host_side();
    let (batcher, worker) = crate::start(model, batching);
    let limits =
        Flags::parse_from(std::iter::once("test").chain(limit_flags.iter().copied())).limits;
    let core = siglip_serve::infer::Config {
        limits: limits.infer_limits(),
        convention: Convention::Processor,
        preprocess_threads: 1,
        text_cache_size: capacity,
    };
    let infer = Infer::alone("tiny", batcher, host, core);
    (infer, worker)
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
            let (embeddings, _) = infer
                .embed_images(images, &infer.preprocessing(None)?, None)
                .await?;
            Ok(embeddings.rows().count())
        }
    });
    common::wait_until("the images being admitted", async || {
        infer.pending_images() == n
    })
    .await;
    call
}

/// Encoded copies of a large photo (3 megapixels).
fn large_photos() -> impl Fn(usize) -> Vec<ImageInput> {
    copies(common::asset("coffee_2000x1500.jpg"))
}

fn copies(image: Vec<u8>) -> impl Fn(usize) -> Vec<ImageInput> {
    move |n| vec![ImageInput::Encoded(image.clone()); n]
}

/// A JPEG that this machine takes at least `at_least` to decode (timed here, the faster of two
/// decodes): the large photo, or the photo tiled until it does.
fn slow_to_decode(at_least: Duration) -> (Vec<u8>, Duration) {
    let photo = common::asset("coffee_2000x1500.jpg");
    let decode_time = |bytes: &[u8]| {
        (0..2)
            .map(|_| {
                let started = Instant::now();
                ImageInput::Encoded(bytes.to_vec())
                    .decode(
                        &ImageLimits::default(),
                        Convention::Processor,
                        &Preprocess::siglip(224),
                    )
                    .expect("decode");
                started.elapsed()
            })
            .min()
            .unwrap()
    };
    let (mut image, mut tiles) = (photo.clone(), 1);
    loop {
        let took = decode_time(&image);
        if took >= at_least {
            eprintln!("the photo tiled {tiles}×{tiles} decodes in {took:?}");
            return (image, took);
        }
        // 2000×1500 tiled 4×4 is 48 megapixels, within the default 50.
        assert!(
            tiles < 4,
            "premise broken: the photo tiled {tiles}×{tiles} decodes in {took:?}, under {at_least:?}"
        );
        tiles += 1;
        image = common::tiled_jpeg(&photo, tiles);
    }
}

/// A check that a result is a refusal over `--max-pending-images`.
fn refused<T>(result: Result<T, Error>) {
    match result {
        Err(Error::ResourceExhausted(m)) => assert!(m.contains("--max-pending-images"), "{m}"),
        Err(e) => panic!("expected RESOURCE_EXHAUSTED, got {e}"),
        Ok(_) => panic!("expected RESOURCE_EXHAUSTED, got embeddings"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_images_than_the_pending_bound_are_refused_at_once() {
    let (infer, worker) = core(16, &["--max-pending-images", "3"]);
    let images = large_photos();
    refused(
        infer
            .embed_images(images(4), &infer.preprocessing(None).unwrap(), None)
            .await,
    );
    assert_eq!(infer.pending_images(), 0);
    stop(infer, worker).await;
}

/// Two images being decoded (one decoder thread) leave room for one more, not two. Each image
/// takes at least 100 ms to decode here (a photo tiled as large as this machine needs, timed
/// first), so the first request is still decoding for twenty of the 5 ms polls that see it
/// admitted; the test checks that it still was when the second was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_being_decoded_count_against_the_pending_bound() {
    let (infer, worker) = core(16, &["--max-pending-images", "3"]);
    let infer = Arc::new(infer);
    let (image, decode) = slow_to_decode(Duration::from_millis(100));
    let images = copies(image);
    let first = admitted(&infer, images(2)).await;
    assert_eq!(
        infer.pending_images(),
        2,
        "premise broken: the first request's images were done before the second came (each \
         decodes in {decode:?})"
    );
    refused(
        infer
            .embed_images(images(2), &infer.preprocessing(None).unwrap(), None)
            .await,
    );
    assert!(
        !first.is_finished(),
        "premise broken: the first request was answered before the second was refused (each \
         image decodes in {decode:?})"
    );
    first.await.unwrap().expect("the first request is served");
    assert_eq!(infer.pending_images(), 0);
    stop(infer, worker).await;
}

/// A caller that goes away, while its images are decoded or wait for their batch, gives them
/// back. They stay pending from admission until their batch runs, and the batch waits a second
/// for others to join it: time enough, whatever the machine's speed, for the test to see them
/// pending and the caller to go away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_gives_its_pending_images_back() {
    let (infer, worker) = core_batching(config(8, 1000, 64), 16, &["--max-pending-images", "3"]);
    let infer = Arc::new(infer);
    let images = large_photos();
    let gone = admitted(&infer, images(3)).await;
    gone.abort();
    let _ = gone.await;
    assert_eq!(infer.pending_images(), 0);
    let (embeddings, _) = infer
        .embed_images(images(3), &infer.preprocessing(None).unwrap(), None)
        .await
        .expect("served");
    assert_eq!(embeddings.rows().count(), 3);
    stop(infer, worker).await;
}

fn texts(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_seen_before_is_a_cache_hit_even_written_differently() {
    let (infer, worker) = core(3, &[]);
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
    stop(infer, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_embedded_once_and_the_cache_keeps_to_its_capacity() {
    let (infer, worker) = core(3, &[]);
    // Two texts first: two misses, two entries.
    infer
        .labels(texts(&["a cat", "a dog"]), None)
        .await
        .unwrap();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_of_size_zero_keeps_nothing() {
    let (off, worker) = core(0, &[]);
    off.labels(texts(&["a cat"]), None).await.unwrap();
    off.labels(texts(&["a cat"]), None).await.unwrap();
    let stats = off.text_cache_stats();
    assert_eq!((stats.hits, stats.entries), (0, 0));
    stop(off, worker).await;
}
