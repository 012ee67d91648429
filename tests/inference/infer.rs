//! The core behind the API (`Infer`): the images it admits at once are bounded and given back,
//! and texts are embedded once and then served from a bounded cache.

use std::sync::Arc;

use siglip_serve::batch::Batcher;
use siglip_serve::error::Error;
use siglip_serve::infer::{ImageInput, Infer};
use siglip_serve::model::image::Convention;

use crate::{common, config, model, stop};

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

/// Encoded copies of a large photo (tens of ms to decode), and a check that a result is a
/// refusal over `--max-pending-images`.
fn large_photos() -> impl Fn(usize) -> Vec<ImageInput> {
    let photo = common::asset("coffee_2000x1500.jpg");
    move |n| vec![ImageInput::Encoded(photo.clone()); n]
}

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
    refused(infer.embed_images(images(4), None).await);
    assert_eq!(infer.pending_images(), 0);
    stop(infer, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_being_decoded_count_against_the_pending_bound() {
    let (infer, worker) = core(16, &["--max-pending-images", "3"]);
    let infer = Arc::new(infer);
    let images = large_photos();
    // Two large photos being decoded (one decoder thread) leave room for one more, not two.
    let first = admitted(&infer, images(2)).await;
    refused(infer.embed_images(images(2), None).await);
    first.await.unwrap().expect("the first request is served");
    assert_eq!(infer.pending_images(), 0);
    stop(infer, worker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_gives_its_pending_images_back() {
    let (infer, worker) = core(16, &["--max-pending-images", "3"]);
    let infer = Arc::new(infer);
    let images = large_photos();
    let gone = admitted(&infer, images(3)).await;
    gone.abort();
    let _ = gone.await;
    assert_eq!(infer.pending_images(), 0);
    let (embeddings, _) = infer.embed_images(images(3), None).await.expect("served");
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
