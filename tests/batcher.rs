//! The inference queue: every caller gets exactly its own rows, dead callers never block or
//! receive, deadlines drop work, a full queue refuses at once.

mod common;

use std::time::{Duration, Instant};

use siglip_serve::batch::{BatchConfig, Batcher};
use siglip_serve::error::Error;
use siglip_serve::model::{
    image::decode, image::ImageLimits, pixels_per_image, runtime::DeviceChoice, scores::Embeddings,
    LoadOptions, Model,
};

fn model() -> Model {
    Model::load(&LoadOptions {
        dir: common::generated("SIGLIP_TEST_MODEL_DIR"),
        device: DeviceChoice::Cpu,
        warmup_rounds: 0,
    })
    .expect("model")
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
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_get_their_own_rows() {
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
    // A long delay and a batch of 4: concurrent callers are batched together, and one caller
    // with more rows than a batch is split over several forward passes.
    let (batcher, _worker) = Batcher::start(model, config(4, 50, 64));

    let mut calls = Vec::new();
    for round in 0..3 {
        for (i, (pixels, alone)) in photos.iter().enumerate() {
            let batcher = batcher.clone();
            let (pixels, alone) = (pixels.clone(), alone.clone());
            calls.push(tokio::spawn(async move {
                let reply = batcher.embed_images(pixels, 1, None).await.expect("images");
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
    let all: Vec<f32> = photos.iter().flat_map(|(p, _)| p.clone()).collect();
    assert_eq!(all.len(), 5 * per_image);
    let reply = batcher
        .embed_images(all, 5, None)
        .await
        .expect("five at once");
    for (i, (_, alone)) in photos.iter().enumerate() {
        assert_close(reply.embeddings.row(i), &alone.data);
    }
    for call in calls {
        call.await.expect("caller");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_cancelled_callers_are_dropped_and_block_no_one() {
    let model = model();
    let photos = photos(&model);
    let (pixels, alone) = photos[0].clone();
    let (batcher, _worker) = Batcher::start(model, config(8, 20, 64));

    let past = Instant::now() - Duration::from_millis(1);
    match batcher.embed_images(pixels.clone(), 1, Some(past)).await {
        Err(Error::DeadlineExceeded(msg)) => {
            assert!(msg.contains("dropped before inference"), "{msg}")
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }

    // Callers that give up (their future is dropped) while others wait in the same batch.
    let quitters: Vec<_> = (0..6)
        .map(|_| {
            let batcher = batcher.clone();
            let pixels = pixels.clone();
            tokio::spawn(async move { batcher.embed_images(pixels, 1, None).await })
        })
        .collect();
    let stayer = {
        let batcher = batcher.clone();
        let pixels = pixels.clone();
        tokio::spawn(async move { batcher.embed_images(pixels, 1, None).await })
    };
    for q in &quitters {
        q.abort();
    }
    let reply = tokio::time::timeout(Duration::from_secs(30), stayer)
        .await
        .expect("the remaining caller is not blocked")
        .expect("join")
        .expect("reply");
    assert_close(&reply.embeddings.data, &alone.data);
    assert_eq!(batcher.depth(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let model = model();
    let photos = photos(&model);
    let (batcher, _worker) = Batcher::start(model, config(1, 0, 1));
    let calls: Vec<_> = (0..12)
        .map(|i| {
            let batcher = batcher.clone();
            let pixels = photos[i % photos.len()].0.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                (
                    batcher.embed_images(pixels, 1, None).await,
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
}
