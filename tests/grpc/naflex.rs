//! SigLIP 2 NaFlex over gRPC: every patch budget by both image conventions against transformers'
//! `Siglip2Model` (reference values `make test` computed in the same run), an image's embedding
//! whatever its batch-mates, regions at their own aspect ratios, GetModelInfo, and every
//! refusal of a patch budget.

use std::path::{Path, PathBuf};

use siglip_serve::grpc::oip::pb::{
    infer_parameter::ParameterChoice, InferParameter, ModelInferRequest,
};
use siglip_serve::grpc::pb::{self, siglip_client::SiglipClient, stream_request::Msg};
use siglip_serve::model::image::{Convention, Transparency};
use siglip_serve::tools::parity::Suite;
use tonic::{transport::Channel, Code};

use crate::common::{asset, decode_as_served, server::Server};
use crate::{assert_status, by_index, encoded, labels, oip, stream_all};

/// A NaFlex end-to-end reference: its model, budget, convention and file stem.
struct Reference {
    model_dir: PathBuf,
    budget: u32,
    convention: Convention,
    file: PathBuf,
}

/// The suite's NaFlex end-to-end references (`python/make_parity_suite.py`).
fn references() -> Vec<Reference> {
    let suite = crate::common::generated("SIGLIP_PARITY_SUITE");
    let dir = suite.parent().unwrap().to_path_buf();
    let listed: Suite =
        serde_json::from_slice(&std::fs::read(&suite).expect("suite")).expect("suite.json");
    let found: Vec<Reference> = listed
        .models
        .into_iter()
        .filter_map(|m| {
            Some(Reference {
                budget: m.max_num_patches?,
                model_dir: dir.join(&m.check.model_dir),
                convention: m.check.convention,
                file: dir.join(&m.check.reference),
            })
        })
        .collect();
    assert!(
        found.len() >= 6,
        "the suite has {} NaFlex model references; expected every budget by both conventions",
        found.len()
    );
    found
}

fn naflex_model() -> PathBuf {
    references().remove(0).model_dir
}

fn options(budget: u32) -> Option<pb::ClassifyOptions> {
    Some(pb::ClassifyOptions {
        max_num_patches: budget,
        ..Default::default()
    })
}

fn classify(image: Vec<u8>, budget: u32) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        model: String::new(),
        image: encoded(image),
        texts: labels(),
        options: options(budget),
    }
}

/// The reference's rows of `name`, one per image.
fn rows(tensors: &[(String, tch::Tensor)], name: &str) -> Vec<Vec<f32>> {
    let t = &tensors.iter().find(|(n, _)| n == name).expect(name).1;
    (0..t.size()[0])
        .map(|i| Vec::<f32>::try_from(t.get(i)).unwrap())
        .collect()
}

/// Classify's logits and probabilities for every image of every reference, at the reference's
/// budget and by its convention, against transformers: logits to 1e-4, probabilities to 1e-6.
#[tokio::test]
async fn every_budget_by_both_conventions_matches_transformers() {
    #[derive(serde::Deserialize)]
    struct Sidecar {
        images: Vec<PathBuf>,
        texts: Vec<String>,
    }
    let all = references();
    for convention in [Convention::Processor, Convention::Pipeline] {
        // The 4000×3000 case is a 4.6 MB PNG: over the default message limit.
        let server = Server::ready_model(
            &all[0].model_dir,
            &[
                "--image-convention",
                convention.name(),
                "--max-message-bytes",
                "16777216",
            ],
            &[],
        )
        .await;
        let mut client = server.client().await;
        let mut checked = 0;
        for r in all.iter().filter(|r| r.convention == convention) {
            let sidecar: Sidecar =
                serde_json::from_slice(&std::fs::read(r.file.with_extension("json")).unwrap())
                    .unwrap();
            let tensors = tch::Tensor::read_safetensors(&r.file).expect("reference");
            let (logits, probs) = (rows(&tensors, "logits"), rows(&tensors, "probs"));
            for (i, path) in sidecar.images.iter().enumerate() {
                let answer = client
                    .classify(pb::ClassifyRequest {
                        texts: sidecar.texts.clone(),
                        ..classify(std::fs::read(path).unwrap(), r.budget)
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                    .into_inner();
                assert_eq!(answer.scores.len(), sidecar.texts.len());
                for s in &answer.scores {
                    let k = s.index as usize;
                    let case = format!("{} at {} by {convention}", name(path), r.budget);
                    assert!(
                        (s.logit - logits[i][k]).abs() <= 1e-4,
                        "{case}: logit {} != {}",
                        s.logit,
                        logits[i][k]
                    );
                    assert!(
                        (s.probability - probs[i][k]).abs() <= 1e-6,
                        "{case}: probability {} != {}",
                        s.probability,
                        probs[i][k]
                    );
                }
                checked += 1;
            }
        }
        assert!(checked >= 30, "{convention}: only {checked} images checked");
    }
}

/// A stream of one frame, `image`, configured at patch budget `budget` with `regions`: its result.
async fn stream_one(
    client: &mut SiglipClient<Channel>,
    budget: u32,
    regions: Vec<pb::Region>,
    image: Vec<u8>,
) -> pb::StreamResponse {
    let config = pb::StreamConfig {
        texts: labels(),
        mode: pb::DeliveryMode::EveryFrame as i32,
        options: options(budget),
        regions,
        ..Default::default()
    };
    let frame = pb::Frame {
        frame_id: 1,
        image: encoded(image),
        ..Default::default()
    };
    let messages = [Msg::Config(config), Msg::Frame(frame)]
        .into_iter()
        .map(|msg| pb::StreamRequest { msg: Some(msg) })
        .collect();
    stream_all(client, messages).await.remove(0)
}

/// A zero-shot ModelInfer request for `image` with the `max_num_patches` parameter.
fn model_infer(image: &[u8], budget: i64) -> ModelInferRequest {
    let mut request = oip::zero_shot("zero-shot", "m", &[image]);
    request.parameters.insert(
        "max_num_patches".into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::Int64Param(budget)),
        },
    );
    request
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

async fn embed(client: &mut SiglipClient<Channel>, images: &[&[u8]], budget: u32) -> Vec<Vec<f32>> {
    client
        .embed_image(pb::EmbedImageRequest {
            model: String::new(),
            images: images
                .iter()
                .map(|b| encoded(b.to_vec()).unwrap())
                .collect(),
            max_num_patches: budget,
        })
        .await
        .expect("EmbedImage")
        .into_inner()
        .embeddings
        .into_iter()
        .map(|e| e.values)
        .collect()
}

/// Padding to M is what makes an image's result independent of its batch-mates: the same image
/// among other images (other aspect ratios, other grids) gives the same embedding, bit for bit,
/// in a pass of the same size. Alone (a pass of another size, so other GEMM blockings) it agrees
/// to float32 rounding.
#[tokio::test]
async fn an_image_is_embedded_the_same_whatever_its_batch_mates() {
    let server = Server::ready_model(&naflex_model(), &[], &[]).await;
    let mut client = server.client().await;
    let photo = asset("chelsea_progressive.jpg");
    let (tall, wide) = (asset("astronaut_strip_37x500.png"), asset("rocket_420.jpg"));
    let (gray, coffee) = (asset("camera_gray.jpg"), asset("coffee_rgb8.png"));
    for budget in [256, 1024] {
        let first = embed(&mut client, &[&photo, &tall, &wide], budget).await;
        let second = embed(&mut client, &[&photo, &gray, &coffee], budget).await;
        assert_eq!(
            first[0], second[0],
            "at {budget}: batch-mates changed a bit"
        );
        let alone = embed(&mut client, &[&photo], budget).await;
        let apart = alone[0]
            .iter()
            .zip(&first[0])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            apart <= 1e-6,
            "at {budget}: alone and in a batch differ by {apart}"
        );
        let other = embed(
            &mut client,
            &[&photo],
            if budget == 256 { 576 } else { 256 },
        )
        .await;
        assert_ne!(other[0], alone[0], "the budget is applied");
    }
}

/// The budget a request names is the one its images get, by every API: Upload, a Stream's config
/// and ModelInfer answer what Classify answers at that budget, which differs from the default's.
#[tokio::test]
async fn the_budget_is_applied_by_every_api() {
    let server = Server::ready_model(&naflex_model(), &[], &[]).await;
    let mut client = server.client().await;
    let photo = asset("chelsea_progressive.jpg");
    let n = labels().len();
    let at = |budget| {
        let mut client = client.clone();
        let photo = photo.clone();
        async move {
            let answer = client.classify(classify(photo, budget)).await.unwrap();
            by_index(&answer.into_inner().scores, n)
        }
    };
    let (default, wanted) = (at(0).await, at(1024).await);
    assert_ne!(default, wanted, "1024 patches differ from 256");
    let close = |api: &str, got: &[f32]| {
        for (g, w) in got.iter().zip(&wanted) {
            assert!(
                (g - w).abs() <= 1e-6,
                "{api}: {got:?} != Classify's {wanted:?}"
            );
        }
    };

    let mut header = crate::upload::header(photo.len());
    if let Some(pb::upload_request::Msg::Header(h)) = &mut header.msg {
        h.options = options(1024);
    }
    let uploaded = client
        .upload(tokio_stream::iter(vec![
            header,
            crate::upload::chunk(&photo),
        ]))
        .await
        .expect("Upload")
        .into_inner();
    close("Upload", &by_index(&uploaded.scores, n));

    let streamed = stream_one(&mut client, 1024, vec![], photo.clone()).await;
    close("Stream", &by_index(&streamed.scores, n));

    let inferred = oip::oip(&server)
        .await
        .model_infer(model_infer(&photo, 1024))
        .await
        .expect("ModelInfer")
        .into_inner();
    close("ModelInfer", &oip::floats(&inferred, "PROBABILITY"));
}

/// A stream's regions are classified each at its own aspect ratio: a region's probabilities are
/// Classify's for the same crop sent as an image, at the stream's budget.
#[tokio::test]
async fn regions_are_classified_at_their_own_aspect_ratio() {
    let server = Server::ready_model(&naflex_model(), &[], &[]).await;
    let mut client = server.client().await;
    let photo = asset("chelsea_progressive.jpg");
    // Decoded as the server decodes it (libjpeg-turbo's decoder, the model's RGB rule).
    let rgb = decode_as_served(&photo, Transparency::Drop);
    let boxes = [(0, 0, 40, 300), (10, 20, 400, 30), (100, 100, 64, 64)];
    let budget = 576;
    let regions = boxes
        .iter()
        .map(|&(x, y, width, height)| pb::Region {
            x,
            y,
            width,
            height,
        })
        .collect();
    let result = stream_one(&mut client, budget, regions, photo.clone()).await;
    let regions = &result.regions;
    assert_eq!(regions.len(), boxes.len());
    for (region, &(x, y, w, h)) in regions.iter().zip(&boxes) {
        let crop = image::imageops::crop_imm(&rgb, x, y, w, h).to_image();
        let png = crate::encode(&crop, image::ImageFormat::Png);
        let alone = client
            .classify(classify(png.clone(), budget))
            .await
            .expect("Classify")
            .into_inner();
        let (got, want) = (
            by_index(&region.scores, labels().len()),
            by_index(&alone.scores, labels().len()),
        );
        let elsewhere = client.classify(classify(png, 256)).await.unwrap();
        assert_ne!(
            got,
            by_index(&elsewhere.into_inner().scores, labels().len())
        );
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-6,
                "region {x},{y} {w}x{h}: {got:?} != {want:?}"
            );
        }
    }
}

#[tokio::test]
async fn model_info_names_the_family_and_its_budgets() {
    let server = Server::ready_model(&naflex_model(), &[], &[]).await;
    let info = crate::model_info(&mut server.client().await).await;
    assert_eq!(info.architecture, "siglip2-naflex");
    assert_eq!(
        (
            info.image_size,
            info.patch_size,
            info.default_max_num_patches
        ),
        (0, 16, 256)
    );
    assert_eq!(info.max_num_patches, [256, 576, 1024]);
    let fixed = Server::ready(&[]).await;
    let info = crate::model_info(&mut fixed.client().await).await;
    assert_eq!((info.patch_size, info.default_max_num_patches), (0, 0));
    assert!(info.max_num_patches.is_empty());
}

/// A budget the model does not allow, by every API that takes one, and any budget on a
/// fixed-resolution model: INVALID_ARGUMENT with what to send instead; the server goes on.
#[tokio::test]
async fn a_budget_the_model_does_not_take_is_refused_by_every_api() {
    let server = Server::ready_model(&naflex_model(), &[], &[]).await;
    let mut client = server.client().await;
    let photo = asset("rocket_420.jpg");
    let allowed = "[256, 576, 1024]";
    let status = client
        .classify(classify(photo.clone(), 300))
        .await
        .unwrap_err();
    assert_status("Classify", &status, Code::InvalidArgument, allowed);
    let status = client
        .embed_image(pb::EmbedImageRequest {
            model: String::new(),
            images: vec![encoded(photo.clone()).unwrap()],
            max_num_patches: 1,
        })
        .await
        .unwrap_err();
    assert_status("EmbedImage", &status, Code::InvalidArgument, allowed);
    let header = pb::UploadRequest {
        msg: Some(pb::upload_request::Msg::Header(pb::UploadHeader {
            texts: labels(),
            options: options(100_000),
            total_bytes: photo.len() as u64,
            ..Default::default()
        })),
    };
    let status = client
        .upload(tokio_stream::iter(vec![header]))
        .await
        .unwrap_err();
    assert_status("Upload", &status, Code::InvalidArgument, allowed);
    let config = pb::StreamRequest {
        msg: Some(Msg::Config(pb::StreamConfig {
            texts: labels(),
            options: options(7),
            ..Default::default()
        })),
    };
    let status = client
        .stream(tokio_stream::iter(vec![config]))
        .await
        .expect("stream opens")
        .into_inner()
        .message()
        .await
        .unwrap_err();
    assert_status("Stream", &status, Code::InvalidArgument, allowed);
    let status = oip::oip(&server)
        .await
        .model_infer(model_infer(&photo, 2048))
        .await
        .unwrap_err();
    assert_status("ModelInfer", &status, Code::InvalidArgument, allowed);
    // An allowed budget through the same request is answered.
    oip::oip(&server)
        .await
        .model_infer(model_infer(&photo, 1024))
        .await
        .expect("an allowed budget");
    client
        .classify(classify(photo.clone(), 576))
        .await
        .expect("the server goes on");

    let fixed = Server::ready(&[]).await;
    let status = fixed
        .client()
        .await
        .classify(classify(photo, 256))
        .await
        .unwrap_err();
    assert_status("fixed", &status, Code::InvalidArgument, "NaFlex");
}
