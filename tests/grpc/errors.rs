//! Bad input gets a status that says what is wrong, and the server serves on; a deadline ends a
//! call; a full queue refuses at once.

use std::time::{Duration, Instant};

use siglip_serve::grpc::pb;
use siglip_serve::model::image::Transparency;
use tonic::{Code, Request};

use crate::common::{self, asset, decode_as_served, server::Server};
use crate::{assert_status, big_png, classify_request, encode, encoded, labels, raw_request};

/// 1000×20: within the pixel limit of the bad-input test, over its side limit.
fn wide_png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(1000, 20, image::Rgb([200, 100, 50]));
    encode(&img, image::ImageFormat::Png)
}

#[tokio::test]
async fn every_bad_classify_request_gets_its_status_and_the_server_serves_on() {
    let server = Server::ready(&[
        "--max-texts",
        "8",
        "--max-image-pixels",
        "1000000",
        "--max-image-side",
        "600",
        "--max-text-bytes",
        "100",
    ])
    .await;
    let mut client = server.client().await;
    let good = asset("chelsea_progressive.jpg");
    let bad_dir = common::generated("SIGLIP_TEST_ASSETS").join("bad");
    let cases: Vec<(&str, pb::ClassifyRequest, Code, &str)> = vec![
        (
            "no image",
            pb::ClassifyRequest {
                model: String::new(),
                image: None,
                texts: labels(),
                options: None,
            },
            Code::InvalidArgument,
            "no image",
        ),
        (
            "no texts",
            classify_request(good.clone(), vec![]),
            Code::InvalidArgument,
            "no texts",
        ),
        (
            "too many texts",
            classify_request(good.clone(), vec!["x".into(); 9]),
            Code::InvalidArgument,
            "--max-texts",
        ),
        (
            "text too long",
            classify_request(good.clone(), vec!["x".repeat(101)]),
            Code::InvalidArgument,
            "--max-text-bytes",
        ),
        (
            "bad threshold",
            pb::ClassifyRequest {
                model: String::new(),
                options: Some(pb::ClassifyOptions {
                    max_num_patches: 0,
                    threshold: 2.0,
                    top_k: 0,
                }),
                ..classify_request(good.clone(), labels())
            },
            Code::InvalidArgument,
            "threshold",
        ),
        (
            "empty image",
            classify_request(vec![], labels()),
            Code::InvalidArgument,
            "empty",
        ),
        (
            "corrupt",
            classify_request(
                std::fs::read(bad_dir.join("corrupt.jpg")).unwrap(),
                labels(),
            ),
            Code::InvalidArgument,
            "not an image",
        ),
        (
            "truncated",
            classify_request(
                std::fs::read(bad_dir.join("truncated.jpg")).unwrap(),
                labels(),
            ),
            Code::InvalidArgument,
            "truncated",
        ),
        (
            "not an image",
            classify_request(std::fs::read(bad_dir.join("text.jpg")).unwrap(), labels()),
            Code::InvalidArgument,
            "not an image",
        ),
        (
            "unsupported",
            classify_request(
                std::fs::read(bad_dir.join("unsupported.pdf")).unwrap(),
                labels(),
            ),
            Code::InvalidArgument,
            "JPEG, PNG",
        ),
        (
            "huge header",
            classify_request(
                std::fs::read(bad_dir.join("huge_dimensions.png")).unwrap(),
                labels(),
            ),
            Code::ResourceExhausted,
            "--max-image-pixels",
        ),
        (
            "over side limit",
            classify_request(wide_png(), labels()),
            Code::ResourceExhausted,
            "--max-image-side",
        ),
        (
            "over pixel limit",
            classify_request(asset("coffee_2000x1500.jpg"), labels()),
            Code::ResourceExhausted,
            "--max-image-pixels",
        ),
        (
            "message over limit",
            classify_request(big_png(1300), labels()),
            Code::ResourceExhausted,
            "Upload",
        ),
    ];
    for (name, request, code, needle) in cases {
        let status = client.classify(request).await.expect_err(name);
        assert_status(name, &status, code, needle);
    }
    // The server keeps serving everyone else.
    client
        .classify(classify_request(good, labels()))
        .await
        .expect("still serving");
}

/// The pixels of a test photo, as a raw RGB8 frame: (width, height, bytes).
fn coffee_rgb8() -> (u32, u32, Vec<u8>) {
    let png = asset("coffee_rgb8.png");
    let rgb = decode_as_served(&png, Transparency::Composite);
    (rgb.width(), rgb.height(), rgb.to_vec())
}

#[tokio::test]
async fn a_raw_frame_with_too_few_bytes_for_its_size_is_invalid() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let (width, height, _) = coffee_rgb8();
    let short = client
        .classify(raw_request(
            width,
            height,
            pb::PixelFormat::Rgb8,
            vec![0; 10],
        ))
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument, "{short:?}");
    assert!(short.message().contains("bytes"), "{}", short.message());
}

#[tokio::test]
async fn a_raw_frame_without_a_pixel_format_is_invalid() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let (width, height, data) = coffee_rgb8();
    let unspecified = client
        .classify(raw_request(
            width,
            height,
            pb::PixelFormat::Unspecified,
            data,
        ))
        .await
        .unwrap_err();
    assert_eq!(unspecified.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn more_images_than_max_images_are_refused() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let too_many = client
        .embed_image(pb::EmbedImageRequest {
            max_num_patches: 0,
            model: String::new(),
            images: vec![encoded(asset("pixel_1x1.png")).unwrap(); 65],
        })
        .await
        .expect_err("over --max-images");
    assert_status(
        "over --max-images",
        &too_many,
        Code::InvalidArgument,
        "--max-images",
    );
}

#[tokio::test]
async fn a_bad_image_among_several_is_named_by_its_index() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let bad = client
        .embed_image(pb::EmbedImageRequest {
            max_num_patches: 0,
            model: String::new(),
            images: vec![
                encoded(asset("rocket.bmp")).unwrap(),
                encoded(b"junk".to_vec()).unwrap(),
            ],
        })
        .await
        .expect_err("bad second image");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("image 1"), "{}", bad.message());
}

#[tokio::test]
async fn a_deadline_ends_the_call_and_the_server_carries_on() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    // Clients enforce their own deadline too: tonic reports it as CANCELLED "Timeout expired"
    // (grpcio and grpc-go as DEADLINE_EXCEEDED). That the server drops the work is checked in
    // tests/inference/batcher.rs; here, that a deadline ends the call and the server carries on.
    let mut request = Request::new(classify_request(asset("coffee_2000x1500.jpg"), labels()));
    request.set_timeout(Duration::from_millis(1));
    let status = client.classify(request).await.expect_err("deadline");
    assert!(
        status.code() == Code::DeadlineExceeded || status.message() == "Timeout expired",
        "{status:?}"
    );
    client
        .classify(classify_request(asset("rocket.bmp"), labels()))
        .await
        .expect("the server carries on");
}

/// A call that carries no deadline gets the server's (`--request-timeout-seconds`), so it cannot
/// wait forever; a caller's own deadline takes its place. The wait here is a batch that fills
/// for 2.5 s (`--max-batch-delay-ms`), longer than the server's 1 s default and shorter than the
/// well-behaved caller's own 20 s.
#[tokio::test]
async fn a_call_without_a_deadline_gets_the_servers_and_a_callers_own_wins() {
    let server = Server::ready(&[
        "--request-timeout-seconds",
        "1",
        "--max-batch-delay-ms",
        "2500",
        "--max-batch-size",
        "8",
    ])
    .await;
    let mut client = server.client().await;
    let with_deadline = |timeout: Duration| {
        let mut request = Request::new(classify_request(asset("rocket.bmp"), labels()));
        request.set_timeout(timeout);
        request
    };

    let started = Instant::now();
    client
        .classify(with_deadline(Duration::from_secs(20)))
        .await
        .expect("a caller's own deadline, longer than the server's, is kept");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "the batch delay did not hold the call: {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let status = client
        .classify(classify_request(asset("rocket.bmp"), labels()))
        .await
        .expect_err("a call without a deadline ends at the server's");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        (Duration::from_millis(900)..Duration::from_millis(2400)).contains(&took),
        "ended after {took:?}, not at the server's 1 s"
    );
    assert_eq!(
        server.health("").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

/// A queue of one: while the worker runs a long job, one caller queues behind it and the callers
/// after it are refused at once (RESOURCE_EXHAUSTED, naming the flag); none hang, and what is
/// accepted is answered.
///
/// The worker is made busy on purpose, for long enough whatever the machine: an EmbedImage of
/// tiny images (each a full forward pass), as many as it takes for their passes to last 20 times
/// a text call's round trip, both measured here. The text calls go out once the worker has taken
/// the images, and the test checks that they reached the queue before the images were answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_refuses_callers_at_once_and_answers_the_rest() {
    const MOST_IMAGES: usize = 1024;
    const CALLERS: usize = 3;
    const TEXTS: usize = 64;
    let most = MOST_IMAGES.to_string();
    let server = Server::ready(&[
        "--max-queue",
        "1",
        "--max-images",
        &most,
        "--max-pending-images",
        &most,
    ])
    .await;
    let mut client = server.client().await;
    // Distinct texts: cached ones would never reach the queue.
    let texts = |caller: usize| pb::EmbedTextRequest {
        model: String::new(),
        texts: (0..TEXTS)
            .map(|j| format!("photo {caller} of {j} cats"))
            .collect(),
    };
    let images = |n: usize| pb::EmbedImageRequest {
        max_num_patches: 0,
        model: String::new(),
        images: vec![encoded(asset("pixel_1x1.png")).unwrap(); n],
    };
    // How long a text call takes to reach the queue: its round trip with its texts cached.
    client.embed_text(texts(0)).await.expect("texts");
    let reach = common::slowest_of(3, async || {
        client.embed_text(texts(0)).await.expect("cached texts");
    })
    .await;
    // How many images keep the worker busy for 20 of those (their passes' time, as the server
    // reports it).
    let mut n = 64;
    loop {
        let reply = client.embed_image(images(n)).await.expect("images");
        let busy = Duration::from_micros(reply.into_inner().timings.expect("timings").inference_us);
        if busy >= reach * 20 {
            break;
        }
        assert!(
            n < MOST_IMAGES,
            "premise broken: {n} images keep the worker busy for only {busy:?}, less than 20 \
             text calls' round trips ({reach:?} each)"
        );
        n *= 2;
    }

    eprintln!("full queue: {n} images keep the worker busy, a text call reaches it in {reach:?}");
    let taken = server.metric("siglip_images_processed_total").await + n as f64;
    let busy = tokio::spawn({
        let mut client = client.clone();
        async move { client.embed_image(images(n)).await.map(|_| ()) }
    });
    // Every image staged for a pass: the worker has the job, and runs its passes now.
    common::wait_until("the worker taking the images", async || {
        server.metric("siglip_images_processed_total").await >= taken
    })
    .await;
    let looked_up = server.metric("siglip_text_cache_misses_total").await;
    let calls: Vec<_> = (1..=CALLERS)
        .map(|caller| {
            let mut client = client.clone();
            tokio::spawn(async move { client.embed_text(texts(caller)).await.map(|_| ()) })
        })
        .collect();
    // A text call looks its texts up in the cache just before it queues them.
    common::wait_until("the text calls reaching the queue", async || {
        server.metric("siglip_text_cache_misses_total").await
            >= looked_up + (CALLERS * TEXTS) as f64
    })
    .await;
    assert!(
        !busy.is_finished(),
        "premise broken: the {n} images were answered before the text calls reached the queue"
    );
    let results = futures_util::future::join_all(calls).await;
    busy.await
        .unwrap()
        .expect("the images are answered in their turn");
    let by_queue = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(s)) if s.code() == Code::ResourceExhausted && s.message().contains("--max-queue")))
        .count();
    let ok = results.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
    assert!(
        by_queue > 0,
        "no call was refused by the queue: {results:?}"
    );
    assert_eq!(by_queue + ok, results.len(), "{results:?}");
}
