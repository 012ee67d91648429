//! The gRPC API end to end: a real server process with the tiny random-weight model, called by
//! a tonic client. Expected probabilities come from the core runtime on the same inputs.

mod common;

use std::time::{Duration, Instant};

use common::{asset, server::Server};
use siglip_serve::grpc::pb::{
    self, siglip_client::SiglipClient, stream_request::Msg, upload_request,
};
use siglip_serve::model::{
    image::{decode, from_raw, Convention, ImageLimits, RawFormat},
    scores::sigmoid,
};
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code, Request};

const LABELS: [&str; 4] = [
    "a photo of a cat",
    "an astronaut",
    "a cup of coffee",
    "a rocket",
];

/// A stream that has been answered once (frame 1, `image`) and whose input stays open while
/// the returned sender lives.
async fn open_stream(
    client: &mut SiglipClient<Channel>,
    image: Vec<u8>,
) -> (
    tokio::sync::mpsc::Sender<pb::StreamRequest>,
    tonic::Streaming<pb::StreamResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(config(&LABELS, pb::DeliveryMode::EveryFrame))
        .await
        .unwrap();
    tx.send(frame(1, image)).await.unwrap();
    let mut out = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(out.next().await.unwrap().expect("result").frame_id, 1);
    (tx, out)
}

fn labels() -> Vec<String> {
    LABELS.iter().map(|s| s.to_string()).collect()
}

fn encoded(bytes: Vec<u8>) -> Option<pb::Image> {
    Some(pb::Image {
        source: Some(pb::image::Source::Encoded(bytes)),
    })
}

/// Probabilities by label index, straight from the core runtime.
fn expected(image: &[u8], texts: &[String]) -> Vec<f32> {
    expected_with(image, texts, Convention::Processor)
}

/// [`expected`] for an image taken to RGB by `convention`.
fn expected_with(image: &[u8], texts: &[String], convention: Convention) -> Vec<f32> {
    probabilities(
        decode(image, &ImageLimits::default(), convention).expect("decode"),
        texts,
    )
}

fn probabilities(rgb: image::RgbImage, texts: &[String]) -> Vec<f32> {
    let model = common::cpu_model("SIGLIP_TEST_MODEL_DIR");
    let img = model.embed_images(&[rgb]).expect("image");
    let txt = model.embed_texts(texts).expect("texts");
    txt.rows()
        .map(|t| sigmoid(model.head().logit(img.row(0), t)))
        .collect()
}

async fn model_info(client: &mut SiglipClient<Channel>) -> pb::ModelInfo {
    client
        .get_model_info(pb::GetModelInfoRequest {})
        .await
        .expect("model info")
        .into_inner()
}

fn by_index(scores: &[pb::LabelScore], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    for s in scores {
        out[s.index as usize] = s.probability;
    }
    out
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "got {got:?}, want {want:?}");
    }
}

/// The status has the code and a message that mentions `needle`; `case` names the check.
fn assert_status(case: &str, status: &tonic::Status, code: Code, needle: &str) {
    assert_eq!(status.code(), code, "{case}: {status:?}");
    assert!(
        status.message().contains(needle),
        "{case}: {:?} lacks {needle:?}",
        status.message()
    );
}

fn classify_request(image: Vec<u8>, texts: Vec<String>) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        image: encoded(image),
        texts,
        options: None,
    }
}

/// A PNG of noise: incompressible, so a modest image is bigger than gRPC's 4 MiB message default.
fn big_png(side: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let b = state.to_le_bytes();
        image::Rgb([b[0], b[1], b[2]])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// 1000×20: within the pixel limit of the bad-input test, over its side limit.
fn wide_png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(1000, 20, image::Rgb([200, 100, 50]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

#[tokio::test]
async fn classify_matches_the_core_runtime_and_filters() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let image = asset("chelsea_progressive.jpg");
    let want = expected(&image, &labels());

    let response = client
        .classify(classify_request(image.clone(), labels()))
        .await
        .expect("classify")
        .into_inner();
    assert_close(&by_index(&response.scores, LABELS.len()), &want);
    assert!(response
        .scores
        .windows(2)
        .all(|w| w[0].probability >= w[1].probability));
    for s in &response.scores {
        assert_eq!(s.label, LABELS[s.index as usize]);
        assert!((sigmoid(s.logit) - s.probability).abs() < 1e-6);
    }
    let t = response.timings.expect("timings");
    assert!(t.total_us >= t.inference_us && t.inference_us > 0);

    let top = client
        .classify(pb::ClassifyRequest {
            options: Some(pb::ClassifyOptions {
                threshold: 0.0,
                top_k: 2,
            }),
            ..classify_request(image.clone(), labels())
        })
        .await
        .expect("top_k")
        .into_inner();
    assert_eq!(top.scores.len(), 2);
    assert_eq!(top.scores[0].index, response.scores[0].index);

    let cut = want.iter().copied().fold(0.0, f32::max) - 1e-4;
    let filtered = client
        .classify(pb::ClassifyRequest {
            options: Some(pb::ClassifyOptions {
                threshold: cut,
                top_k: 0,
            }),
            ..classify_request(image, labels())
        })
        .await
        .expect("threshold")
        .into_inner();
    assert!(!filtered.scores.is_empty() && filtered.scores.iter().all(|s| s.probability >= cut));
}

#[tokio::test]
async fn raw_frames_equal_the_encoded_image() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let png = asset("coffee_rgb8.png");
    let rgb = decode(&png, &ImageLimits::default(), Convention::Processor).expect("decode");
    let want = expected(&png, &labels());
    let raw = |format: pb::PixelFormat, data: Vec<u8>| pb::ClassifyRequest {
        image: Some(pb::Image {
            source: Some(pb::image::Source::Raw(pb::RawFrame {
                width: rgb.width(),
                height: rgb.height(),
                format: format as i32,
                data,
            })),
        }),
        texts: labels(),
        options: None,
    };
    let rgb8 = client
        .classify(raw(pb::PixelFormat::Rgb8, rgb.to_vec()))
        .await
        .expect("rgb8")
        .into_inner();
    assert_close(&by_index(&rgb8.scores, LABELS.len()), &want);
    let rgba: Vec<u8> = rgb.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    let rgba8 = client
        .classify(raw(pb::PixelFormat::Rgba8, rgba))
        .await
        .expect("rgba8")
        .into_inner();
    assert_close(&by_index(&rgba8.scores, LABELS.len()), &want);

    let short = client
        .classify(raw(pb::PixelFormat::Rgb8, vec![0; 10]))
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument, "{short:?}");
    assert!(short.message().contains("bytes"), "{}", short.message());
    let unspecified = client
        .classify(raw(pb::PixelFormat::Unspecified, rgb.to_vec()))
        .await
        .unwrap_err();
    assert_eq!(unspecified.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn every_bad_input_gets_the_right_status() {
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
                options: Some(pb::ClassifyOptions {
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

#[tokio::test]
async fn upload_reassembles_images_over_the_message_limit() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let image = big_png(1300);
    assert!(
        image.len() > 4 << 20,
        "test image must exceed gRPC's 4 MiB default"
    );
    let header = |total: usize| pb::UploadRequest {
        msg: Some(upload_request::Msg::Header(pb::UploadHeader {
            texts: labels(),
            options: None,
            total_bytes: total as u64,
        })),
    };
    let chunk = |bytes: &[u8]| pb::UploadRequest {
        msg: Some(upload_request::Msg::Chunk(bytes.to_vec())),
    };
    let mut messages = vec![header(image.len())];
    messages.extend(image.chunks(1 << 20).map(chunk));
    let response = client
        .upload(tokio_stream::iter(messages))
        .await
        .expect("upload")
        .into_inner();
    assert_close(
        &by_index(&response.scores, LABELS.len()),
        &expected(&image, &labels()),
    );

    let small = asset("rocket.bmp");
    let violations: Vec<(&str, Vec<pb::UploadRequest>, Code, &str)> = vec![
        (
            "chunk first",
            vec![chunk(&small)],
            Code::InvalidArgument,
            "first message",
        ),
        (
            "short",
            vec![header(small.len() + 10), chunk(&small)],
            Code::InvalidArgument,
            "ended after",
        ),
        (
            "long",
            vec![header(small.len() - 10), chunk(&small)],
            Code::InvalidArgument,
            "more than",
        ),
        (
            "two headers",
            vec![
                header(small.len()),
                chunk(&small[..10]),
                header(small.len()),
            ],
            Code::InvalidArgument,
            "second header",
        ),
        (
            "no header",
            vec![],
            Code::InvalidArgument,
            "before the header",
        ),
        (
            "declared too large",
            vec![header(1 << 40)],
            Code::ResourceExhausted,
            "--max-image-bytes",
        ),
    ];
    for (name, messages, code, needle) in violations {
        let status = client
            .upload(tokio_stream::iter(messages))
            .await
            .expect_err(name);
        assert_status(name, &status, code, needle);
    }
}

fn config(texts: &[&str], mode: pb::DeliveryMode) -> pb::StreamRequest {
    pb::StreamRequest {
        msg: Some(Msg::Config(pb::StreamConfig {
            texts: texts.iter().map(|s| s.to_string()).collect(),
            options: None,
            mode: mode as i32,
        })),
    }
}

/// Sends every message, half-closes, and collects every result (none may be an error).
async fn stream_all(
    client: &mut SiglipClient<tonic::transport::Channel>,
    messages: Vec<pb::StreamRequest>,
) -> Vec<pb::StreamResponse> {
    client
        .stream(tokio_stream::iter(messages))
        .await
        .expect("stream")
        .into_inner()
        .map(|r| r.expect("result"))
        .collect()
        .await
}

fn frame(id: u64, image: Vec<u8>) -> pb::StreamRequest {
    pb::StreamRequest {
        msg: Some(Msg::Frame(pb::Frame {
            frame_id: id,
            timestamp_us: id as i64 * 33_000,
            image: encoded(image),
            chunk: vec![],
            last: false,
        })),
    }
}

fn frame_chunk(id: u64, bytes: &[u8], last: bool) -> pb::StreamRequest {
    pb::StreamRequest {
        msg: Some(Msg::Frame(pb::Frame {
            frame_id: id,
            timestamp_us: 0,
            image: None,
            chunk: bytes.to_vec(),
            last,
        })),
    }
}

#[tokio::test]
async fn every_frame_stream_keeps_order_reports_bad_frames_and_switches_labels() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let cat = asset("chelsea_progressive.jpg");
    let rocket = asset("rocket.bmp");
    let mut messages = vec![config(&LABELS, pb::DeliveryMode::EveryFrame)];
    for id in 0..6 {
        messages.push(frame(
            id,
            if id % 2 == 0 {
                cat.clone()
            } else {
                rocket.clone()
            },
        ));
    }
    messages.push(frame(6, b"not an image".to_vec()));
    let (a, b) = cat.split_at(cat.len() / 3);
    messages.push(frame_chunk(7, a, false));
    messages.push(frame_chunk(7, b, true));
    messages.push(config(&["a dog", "a cat"], pb::DeliveryMode::Unspecified));
    messages.push(frame(8, cat.clone()));

    let results = stream_all(&mut client, messages).await;
    let ids: Vec<u64> = results.iter().map(|r| r.frame_id).collect();
    assert_eq!(ids, (0..9).collect::<Vec<_>>(), "every frame, in order");
    let want_cat = expected(&cat, &labels());
    let want_rocket = expected(&rocket, &labels());
    for r in &results[..6] {
        let want = if r.frame_id % 2 == 0 {
            &want_cat
        } else {
            &want_rocket
        };
        assert_close(&by_index(&r.scores, LABELS.len()), want);
        assert_eq!(r.timestamp_us, r.frame_id as i64 * 33_000);
        assert_eq!(r.config_generation, 0);
    }
    let bad = results[6]
        .error
        .as_ref()
        .expect("in-band error for the bad frame");
    assert_eq!(bad.code, Code::InvalidArgument as i32);
    assert!(results[6].scores.is_empty());
    assert_close(&by_index(&results[7].scores, LABELS.len()), &want_cat);
    assert_eq!(results[8].config_generation, 1);
    let new_labels: Vec<String> = vec!["a dog".into(), "a cat".into()];
    assert_close(
        &by_index(&results[8].scores, 2),
        &expected(&cat, &new_labels),
    );
}

#[tokio::test]
async fn latest_only_stream_drops_stale_frames_under_a_slow_consumer() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    // A large JPEG takes tens of ms to decode: sent back to back, frames outrun the server.
    let big = asset("coffee_2000x1500.jpg");
    let sent = 30u64;
    let mut messages = vec![config(&LABELS, pb::DeliveryMode::LatestOnly)];
    messages.extend((0..sent).map(|id| frame(id, big.clone())));
    let results = stream_all(&mut client, messages).await;
    let skipped: u64 = results.iter().map(|r| r.skipped_frames).sum();
    assert!(
        skipped > 0,
        "no frame was dropped: {} results",
        results.len()
    );
    assert_eq!(
        results.len() as u64 + skipped,
        sent,
        "every frame is answered or counted as skipped"
    );
    assert!(results.windows(2).all(|w| w[0].frame_id < w[1].frame_id));
    assert_eq!(
        results.last().unwrap().frame_id,
        sent - 1,
        "the freshest frame is always answered"
    );
}

#[tokio::test]
async fn stream_protocol_violations_limits_and_lifetime() {
    let server = Server::ready(&["--max-streams", "1", "--max-stream-seconds", "2"]).await;
    let mut client = server.client().await;
    let cat = asset("chelsea_progressive.jpg");

    let mut out = client
        .stream(tokio_stream::iter(vec![frame(0, cat.clone())]))
        .await
        .expect("stream opens")
        .into_inner();
    let status = out
        .next()
        .await
        .expect("an item")
        .expect_err("frame before config");
    assert_status(
        "frame before config",
        &status,
        Code::InvalidArgument,
        "first message",
    );
    drop(out);

    let both = pb::StreamRequest {
        msg: Some(Msg::Frame(pb::Frame {
            frame_id: 3,
            image: encoded(cat.clone()),
            chunk: cat[..10].to_vec(),
            ..Default::default()
        })),
    };
    let violations: Vec<(&str, Vec<pb::StreamRequest>, &str)> = vec![
        (
            "image and chunk",
            vec![config(&LABELS, pb::DeliveryMode::EveryFrame), both],
            "both image and chunk",
        ),
        (
            "empty frame",
            vec![
                config(&LABELS, pb::DeliveryMode::EveryFrame),
                frame_chunk(4, &[], false),
            ],
            "neither",
        ),
        (
            "unfinished frame",
            vec![
                config(&LABELS, pb::DeliveryMode::EveryFrame),
                frame_chunk(5, &cat[..10], false),
            ],
            "before frame 5 was complete",
        ),
        (
            "interleaved chunks",
            vec![
                config(&LABELS, pb::DeliveryMode::EveryFrame),
                frame_chunk(5, &cat[..10], false),
                frame_chunk(6, &cat[..10], true),
            ],
            "before frame 5 was complete",
        ),
        (
            "mode change",
            vec![
                config(&LABELS, pb::DeliveryMode::EveryFrame),
                config(&LABELS, pb::DeliveryMode::LatestOnly),
            ],
            "mode cannot change",
        ),
        (
            "empty labels",
            vec![config(&[], pb::DeliveryMode::EveryFrame)],
            "no texts",
        ),
    ];
    for (name, messages, needle) in violations {
        let mut out = client
            .stream(tokio_stream::iter(messages))
            .await
            .expect(name)
            .into_inner();
        let status = loop {
            match out.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => break status,
                None => panic!("{name}: stream ended without an error"),
            }
        };
        assert_status(name, &status, Code::InvalidArgument, needle);
    }

    // One stream open (a client that keeps its side open), a second is refused at once.
    let opened = Instant::now();
    let (tx, mut first) = open_stream(&mut client, cat.clone()).await;
    let second = client
        .stream(tokio_stream::iter(vec![config(
            &LABELS,
            pb::DeliveryMode::EveryFrame,
        )]))
        .await;
    let refused = match second {
        Err(status) => status,
        Ok(response) => match response.into_inner().next().await {
            Some(Err(status)) => status,
            other => panic!("a second stream was not refused: {other:?}"),
        },
    };
    assert_status(
        "second stream over --max-streams",
        &refused,
        Code::ResourceExhausted,
        "--max-streams",
    );

    // The open stream ends at its maximum lifetime, with a status that says to reconnect.
    let end = first
        .next()
        .await
        .expect("end")
        .expect_err("lifetime status");
    assert_status(
        "stream lifetime",
        &end,
        Code::Unavailable,
        "maximum lifetime",
    );
    assert!(opened.elapsed() >= Duration::from_millis(1500));
    drop(tx);

    // A client that disconnects mid-stream frees its slot: the next stream is accepted.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(config(&LABELS, pb::DeliveryMode::EveryFrame))
        .await
        .unwrap();
    tx.send(frame_chunk(9, &cat[..100], false)).await.unwrap();
    let mut abandoned = server.client().await;
    let response = abandoned
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream");
    drop(response);
    drop(abandoned);
    drop(tx);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let messages = vec![
            config(&LABELS, pb::DeliveryMode::EveryFrame),
            frame(10, cat.clone()),
        ];
        match client.stream(tokio_stream::iter(messages)).await {
            Ok(response) => match response.into_inner().next().await.expect("an item") {
                Ok(result) => {
                    assert_eq!(result.frame_id, 10);
                    break;
                }
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
            },
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
        assert!(
            Instant::now() < until,
            "the disconnected stream's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The image convention decides what transparent and EXIF-rotated images look like, for
/// encoded images and raw RGBA frames alike, and GetModelInfo reports it.
#[tokio::test]
async fn image_convention_is_applied_and_reported() {
    let photo = asset("astronaut_rgba.png");
    let rgba = image::load_from_memory(&photo).expect("png").into_rgba8();
    let (width, height) = rgba.dimensions();
    let frame = rgba.into_raw();
    let raw = pb::ClassifyRequest {
        image: Some(pb::Image {
            source: Some(pb::image::Source::Raw(pb::RawFrame {
                width,
                height,
                format: pb::PixelFormat::Rgba8 as i32,
                data: frame.clone(),
            })),
        }),
        texts: labels(),
        options: None,
    };
    let raw_expected = |convention| {
        let limits = ImageLimits::default();
        let rgb = from_raw(width, height, RawFormat::Rgba8, &frame, &limits, convention);
        probabilities(rgb.expect("frame"), &labels())
    };
    let processor = expected_with(&photo, &labels(), Convention::Processor);
    let pipeline = expected_with(&photo, &labels(), Convention::Pipeline);
    let apart = processor
        .iter()
        .zip(&pipeline)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        apart > 1e-3,
        "the conventions agree on this photo ({apart})"
    );
    for (flags, convention, want) in [
        (&[][..], Convention::Processor, &processor),
        (
            &["--image-convention", "pipeline"][..],
            Convention::Pipeline,
            &pipeline,
        ),
    ] {
        let server = Server::ready(flags).await;
        let mut client = server.client().await;
        let info = model_info(&mut client).await;
        assert_eq!(info.image_convention, convention.name());
        let got = client
            .classify(classify_request(photo.clone(), labels()))
            .await
            .expect("classify")
            .into_inner();
        assert_close(&by_index(&got.scores, LABELS.len()), want);
        let got = client
            .classify(raw.clone())
            .await
            .expect("raw")
            .into_inner();
        assert_close(
            &by_index(&got.scores, LABELS.len()),
            &raw_expected(convention),
        );
    }
}

#[tokio::test]
async fn embeddings_and_model_info() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let info = model_info(&mut client).await;
    assert_eq!(info.model_id, "random/tiny");
    assert_eq!(info.image_convention, "processor");
    assert!(info.random_weights);
    assert_eq!(info.device, "cpu");
    assert_eq!(info.max_text_tokens, 64);

    let texts = client
        .embed_text(pb::EmbedTextRequest { texts: labels() })
        .await
        .expect("embed text")
        .into_inner();
    let images = client
        .embed_image(pb::EmbedImageRequest {
            images: vec![
                encoded(asset("chelsea_progressive.jpg")).unwrap(),
                encoded(asset("rocket.bmp")).unwrap(),
            ],
        })
        .await
        .expect("embed image")
        .into_inner();
    assert_eq!(texts.embeddings.len(), LABELS.len());
    assert_eq!(images.embeddings.len(), 2);
    for e in texts.embeddings.iter().chain(&images.embeddings) {
        assert_eq!(e.values.len(), info.embedding_dim as usize);
        let norm: f32 = e.values.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not L2-normalised: {norm}");
    }
    let too_many = client
        .embed_image(pb::EmbedImageRequest {
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
    let bad = client
        .embed_image(pb::EmbedImageRequest {
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
async fn deadline_exceeded_and_queue_full() {
    let server = Server::ready(&["--max-queue", "1"]).await;
    let mut client = server.client().await;
    // Clients enforce their own deadline too: tonic reports it as CANCELLED "Timeout expired"
    // (grpcio and grpc-go as DEADLINE_EXCEEDED). That the server drops the work is checked in
    // tests/batcher.rs; here, that a deadline ends the call and the server carries on.
    let mut request = Request::new(classify_request(asset("coffee_2000x1500.jpg"), labels()));
    request.set_timeout(Duration::from_millis(1));
    let status = client.classify(request).await.expect_err("deadline");
    assert!(
        status.code() == Code::DeadlineExceeded || status.message() == "Timeout expired",
        "{status:?}"
    );

    // Many callers at once against a queue of one: some are refused at once, none hang, and
    // everything accepted is answered. Distinct texts: cached ones would never reach the queue.
    let calls = (0..24).map(|i| {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .embed_text(pb::EmbedTextRequest {
                    texts: (0..64).map(|j| format!("photo {i} of {j} cats")).collect(),
                })
                .await
                .map(|_| ())
        })
    });
    let results = futures_util::future::join_all(calls).await;
    let refused = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(s)) if s.code() == Code::ResourceExhausted && s.message().contains("--max-queue")))
        .count();
    let ok = results.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
    assert!(refused > 0, "no call was refused");
    assert_eq!(refused + ok, results.len(), "{results:?}");
}

#[tokio::test]
async fn health_reflection_and_graceful_shutdown() {
    // Batches wait for company for half a second: calls stay in flight long enough to be caught
    // by the SIGTERM below.
    let server = Server::ready(&["--max-batch-size", "64", "--max-batch-delay-ms", "500"]).await;
    let client = server.client().await;
    assert_eq!(
        server.health("siglip.v1.Siglip").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    // Reflection lists the API (v1; v1alpha is served too).
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            server.channel().await,
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            ),
        ),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let listed = format!("{:?}", responses.next().await.unwrap().unwrap());
    for name in ["siglip.v1.Siglip", "grpc.health.v1.Health"] {
        assert!(listed.contains(name), "{name} not in {listed}");
    }

    // Watch health, start work, then SIGTERM: health turns NOT_SERVING, in-flight work finishes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let (tx, mut open) = open_stream(&mut client.clone(), asset("rocket.bmp")).await;
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let mut client = client.clone();
            let image = asset("coffee_2000x1500.jpg");
            tokio::spawn(async move { client.classify(classify_request(image, labels())).await })
        })
        .collect();
    // The four calls are being handled (their bodies have arrived, the batcher holds them)
    // before SIGTERM.
    common::wait_until("the four calls arriving", async || {
        server.metric("siglip_inflight_requests").await >= 4.0
    })
    .await;
    server.terminate();
    let status = loop {
        match watch.next().await {
            Some(Ok(update))
                if update.status()
                    == tonic_health::pb::health_check_response::ServingStatus::Serving =>
            {
                continue
            }
            Some(Ok(update)) => break Some(update.status()),
            _ => break None,
        }
    };
    assert_eq!(
        status,
        Some(tonic_health::pb::health_check_response::ServingStatus::NotServing)
    );
    // Then the Watch ends, so that it does not hold the drain open.
    assert!(
        watch
            .next()
            .await
            .transpose()
            .expect("watch ends with OK")
            .is_none(),
        "the health Watch went on after NOT_SERVING"
    );
    for call in in_flight {
        call.await
            .unwrap()
            .expect("in-flight request completes during shutdown");
    }
    // The stream is told to reconnect elsewhere.
    let end = open
        .next()
        .await
        .expect("end")
        .expect_err("shutdown status");
    assert_status(
        "stream at shutdown",
        &end,
        Code::Unavailable,
        "shutting down",
    );
    drop(tx);
    server.exits_cleanly(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn sigterm_while_the_model_loads_exits_at_once() {
    // A warm-up that would take hours keeps the server loading: health says NOT_SERVING and
    // calls are refused with UNAVAILABLE.
    let server = Server::spawn(&["--warmup-rounds", "100000000"]);
    server
        .wait_for(tonic_health::pb::health_check_response::ServingStatus::NotServing)
        .await;
    let loading = server
        .client()
        .await
        .classify(classify_request(asset("rocket.bmp"), labels()))
        .await
        .expect_err("not ready");
    assert_eq!(loading.code(), Code::Unavailable);
    server.terminate();
    server.exits_cleanly(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_compiled_package_unpacked_at_load_is_removed_at_exit() {
    let model = common::generated("SIGLIP_TEST_AOTI_MODEL_DIR");
    let server = Server::ready_model(&model, &["--max-batch-size", "8"], &[]).await;
    // libtorch's loader unpacks the package into a fresh temporary directory and maps the
    // model's shared library from there.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", server.pid())).unwrap();
    let unpacked = maps
        .split_whitespace()
        .find_map(|path| path.split_once("/data/aotinductor/").map(|(dir, _)| dir))
        .map(std::path::PathBuf::from)
        .expect("the package's library is mapped from where it was unpacked");
    assert!(unpacked.is_dir(), "{}", unpacked.display());
    server.terminate();
    server.exits_cleanly(Duration::from_secs(30)).await;
    assert!(
        !unpacked.exists(),
        "{} was left behind at exit",
        unpacked.display()
    );
}

#[tokio::test]
async fn flags_come_from_the_environment_and_the_health_command_reports_serving() {
    let model = common::generated("SIGLIP_TEST_MODEL_DIR");
    let env = [
        ("SIGLIP_MAX_TEXTS", "2"),
        ("SIGLIP_IMAGE_CONVENTION", "pipeline"),
    ];
    let server = Server::ready_model(&model, &[], &env).await;
    let mut client = server.client().await;
    assert_eq!(model_info(&mut client).await.image_convention, "pipeline");
    let three = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let status = client
        .classify(classify_request(asset("rocket.bmp"), three))
        .await
        .expect_err("over SIGLIP_MAX_TEXTS");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("limit of 2"),
        "{}",
        status.message()
    );

    let health = |addr: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_siglip-serve"))
            .args(["health", "--addr", &addr])
            .output()
            .expect("run siglip-serve health")
    };
    drop(client);
    let url = server.url();
    let up = health(url.clone());
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    server.terminate();
    server.exits_cleanly(Duration::from_secs(30)).await;
    // The server is gone: the command fails (the container's HEALTHCHECK relies on it).
    assert!(!health(url).status.success());
}
