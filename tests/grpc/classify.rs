//! Classify: its answers agree with the core runtime, its options filter them, raw frames score
//! like the encoded image, and the image convention decides what transparent and EXIF-rotated
//! images look like.

use siglip_serve::grpc::pb::{self, siglip_client::SiglipClient};
use siglip_serve::model::{
    image::{
        decode, from_raw, Convention, ImageLimits, ImageProcessor, Preprocess, RawFormat,
        Transparency,
    },
    scores::sigmoid,
};
use tonic::transport::Channel;

use crate::common::{asset, decode_as_served, server::Server};
use crate::{
    assert_close, by_index, classify_request, expected, expected_with, labels, model_info,
    probabilities_by, raw_request, LABELS,
};

/// Classify with the test labels, which must succeed.
async fn classify(client: &mut SiglipClient<Channel>, image: Vec<u8>) -> pb::ClassifyResponse {
    client
        .classify(classify_request(image, labels()))
        .await
        .expect("classify")
        .into_inner()
}

#[tokio::test]
async fn classify_gives_the_core_runtimes_probabilities() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let image = asset("chelsea_progressive.jpg");
    let response = classify(&mut client, image.clone()).await;
    assert_close(
        &by_index(&response.scores, LABELS.len()),
        &expected(&image, &labels()),
    );
}

#[tokio::test]
async fn scores_come_most_probable_first_with_their_label_and_logit() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let response = classify(&mut client, asset("chelsea_progressive.jpg")).await;
    assert!(response
        .scores
        .windows(2)
        .all(|w| w[0].probability >= w[1].probability));
    for s in &response.scores {
        assert_eq!(s.label, LABELS[s.index as usize]);
        assert!((sigmoid(s.logit) - s.probability).abs() < 1e-6);
    }
}

#[tokio::test]
async fn classify_reports_its_timings() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let response = classify(&mut client, asset("chelsea_progressive.jpg")).await;
    let t = response.timings.expect("timings");
    assert!(t.total_us >= t.inference_us && t.inference_us > 0);
}

#[tokio::test]
async fn top_k_keeps_the_k_most_probable_labels() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let image = asset("chelsea_progressive.jpg");
    let all = classify(&mut client, image.clone()).await;
    let top = client
        .classify(pb::ClassifyRequest {
            model: String::new(),
            options: Some(pb::ClassifyOptions {
                max_num_patches: 0,
                threshold: 0.0,
                top_k: 2,
            }),
            ..classify_request(image, labels())
        })
        .await
        .expect("top_k")
        .into_inner();
    assert_eq!(top.scores.len(), 2);
    assert_eq!(top.scores[0].index, all.scores[0].index);
}

#[tokio::test]
async fn a_threshold_keeps_only_the_labels_at_or_above_it() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let image = asset("chelsea_progressive.jpg");
    let want = expected(&image, &labels());
    let cut = want.iter().copied().fold(0.0, f32::max) - 1e-4;
    let filtered = client
        .classify(pb::ClassifyRequest {
            model: String::new(),
            options: Some(pb::ClassifyOptions {
                max_num_patches: 0,
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
async fn raw_rgb8_and_rgba8_frames_score_like_the_encoded_image() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let png = asset("coffee_rgb8.png");
    let rgb = decode_as_served(&png, Transparency::Composite);
    let want = expected(&png, &labels());
    let raw = |format, data| raw_request(rgb.width(), rgb.height(), format, data);
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
}

/// The photo the convention tests use: transparent, so that the conventions take it to RGB
/// differently.
const CONVENTION_PHOTO: &str = "astronaut_rgba.png";

/// Without this, the two tests below could not tell the conventions apart.
#[test]
fn the_conventions_disagree_on_the_test_photo() {
    let photo = asset(CONVENTION_PHOTO);
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
}

/// Without this, the torchvision test below could not tell the processors apart: on the encoded
/// photo (resampling) and on its raw RGBA frame (resampling and compositing).
#[test]
fn the_processors_disagree_on_the_test_photo() {
    let photo = asset(CONVENTION_PHOTO);
    let rgba = image::load_from_memory(&photo).expect("png").into_rgba8();
    let (width, height) = rgba.dimensions();
    let limits = ImageLimits::default();
    let apart = |rgb: &dyn Fn(ImageProcessor) -> image::RgbImage| {
        let pil = probabilities_by(rgb(ImageProcessor::Pil), &labels(), ImageProcessor::Pil);
        let torchvision = probabilities_by(
            rgb(ImageProcessor::Torchvision),
            &labels(),
            ImageProcessor::Torchvision,
        );
        pil.iter()
            .zip(&torchvision)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    };
    let encoded = apart(&|_| {
        decode(
            &photo,
            &limits,
            Convention::Processor,
            Transparency::Composite,
        )
        .expect("decode")
    });
    let raw = apart(&|processor| {
        let frame = rgba.as_raw();
        from_raw(
            width,
            height,
            RawFormat::Rgba8,
            frame,
            &limits,
            Convention::Processor,
            &Preprocess {
                processor,
                ..Preprocess::siglip(224)
            },
        )
        .expect("frame")
    });
    // Well over assert_close's 1e-5 (measured: 7e-5 encoded, 2e-3 raw).
    assert!(
        encoded > 3e-5 && raw > 3e-5,
        "the processors agree on this photo (encoded {encoded}, raw {raw})"
    );
}

#[tokio::test]
async fn by_default_the_processor_convention_is_applied_and_reported() {
    convention_is_applied_and_reported(&[], Convention::Processor, ImageProcessor::Pil).await;
}

#[tokio::test]
async fn the_pipeline_convention_is_applied_and_reported_when_chosen() {
    convention_is_applied_and_reported(
        &["--image-convention", "pipeline"],
        Convention::Pipeline,
        ImageProcessor::Pil,
    )
    .await;
}

/// The processor backend is a choice of its own, beside the convention (the parity suite and
/// `tests/grpc/regions.rs` hold it to transformers; this checks the flag reaches both paths).
#[tokio::test]
async fn the_torchvision_processor_is_applied_and_reported_when_chosen() {
    convention_is_applied_and_reported(
        &["--image-processor", "torchvision"],
        Convention::Processor,
        ImageProcessor::Torchvision,
    )
    .await;
}

/// A server started with `flags` reports `convention` and `processor` in GetModelInfo and
/// applies them to encoded images and raw RGBA frames alike.
async fn convention_is_applied_and_reported(
    flags: &[&str],
    convention: Convention,
    processor: ImageProcessor,
) {
    let photo = asset(CONVENTION_PHOTO);
    let rgba = image::load_from_memory(&photo).expect("png").into_rgba8();
    let (width, height) = rgba.dimensions();
    let frame = rgba.into_raw();
    let raw = raw_request(width, height, pb::PixelFormat::Rgba8, frame.clone());
    let limits = ImageLimits::default();
    let raw_rgb = from_raw(
        width,
        height,
        RawFormat::Rgba8,
        &frame,
        &limits,
        convention,
        &Preprocess {
            processor,
            ..Preprocess::siglip(224)
        },
    );
    let raw_expected = probabilities_by(raw_rgb.expect("frame"), &labels(), processor);
    let rgb = decode(&photo, &limits, convention, Transparency::Composite).expect("decode");
    let want = probabilities_by(rgb, &labels(), processor);

    let server = Server::ready(flags).await;
    let mut client = server.client().await;
    let info = model_info(&mut client).await;
    assert_eq!(info.image_convention, convention.name());
    assert_eq!(info.image_processor, processor.name());
    let got = classify(&mut client, photo.clone()).await;
    assert_close(&by_index(&got.scores, LABELS.len()), &want);
    let got = client.classify(raw).await.expect("raw").into_inner();
    assert_close(&by_index(&got.scores, LABELS.len()), &raw_expected);
}
