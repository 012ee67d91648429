//! Several models in one server: a repository of links to the models `make test` builds ("tiny":
//! the model the other tests serve; "base-224": the slow one), every RPC against each, the
//! default model, unknown and loading models, per-model health, ListModels, fairness between
//! the models, and hot swaps under load.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use siglip_serve::grpc::pb::{self, stream_request::Msg, upload_request};
use siglip_serve::model::{
    image::{ImageProcessor, Transparency},
    manifest::Manifest,
};
use tokio_stream::StreamExt;
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

use crate::common::{asset, decode_as_served, generated, server::Server, wait_until, Scratch};
use crate::{assert_close, assert_status, by_index, encoded, frame, labels, probabilities_from};

const TINY: &str = "SIGLIP_TEST_MODEL_DIR";
const BASE: &str = "SIGLIP_TEST_SLOW_MODEL_DIR";
const SIGLIP2: &str = "SIGLIP_TEST_SIGLIP2_MODEL_DIR";
const PHOTO: &str = "chelsea_progressive.jpg";

/// A repository whose folders are links: `name` → the model `make test` built under `var`.
fn repository(test: &str, models: &[(&str, &str)]) -> Scratch {
    let scratch = Scratch::new(test);
    for (name, var) in models {
        link(&generated(var), &scratch.0.join(name));
    }
    scratch
}

/// Points the link `at` to `target` in one step (a new link renamed over the old), as an
/// operator swaps a model folder.
fn link(target: &Path, at: &Path) {
    let tmp = at.with_file_name(".swap");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("link");
    std::fs::rename(&tmp, at).expect("swap");
}

fn model_id(var: &str) -> String {
    Manifest::load(&generated(var)).expect("manifest").model_id
}

/// Each label's probability for [`PHOTO`], from the core runtime on the model under `var`.
fn want(var: &str) -> Vec<f32> {
    let rgb = decode_as_served(&asset(PHOTO), Transparency::Composite);
    probabilities_from(var, rgb, &labels(), ImageProcessor::Pil)
}

fn classify(model: &str) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        model: model.into(),
        image: encoded(asset(PHOTO)),
        texts: labels(),
        options: None,
    }
}

fn stream_config(model: &str) -> pb::StreamRequest {
    pb::StreamRequest {
        msg: Some(Msg::Config(pb::StreamConfig {
            model: model.into(),
            texts: labels(),
            ..Default::default()
        })),
    }
}

fn upload(model: &str) -> Vec<pb::UploadRequest> {
    let image = asset(PHOTO);
    let mut messages = vec![pb::UploadRequest {
        msg: Some(upload_request::Msg::Header(pb::UploadHeader {
            model: model.into(),
            texts: labels(),
            options: None,
            total_bytes: image.len() as u64,
        })),
    }];
    messages.extend(image.chunks(4096).map(|c| pb::UploadRequest {
        msg: Some(upload_request::Msg::Chunk(c.to_vec())),
    }));
    messages
}

async fn list(server: &Server) -> pb::ListModelsResponse {
    server
        .client()
        .await
        .list_models(pb::ListModelsRequest {})
        .await
        .expect("list models")
        .into_inner()
}

fn state(list: &pb::ListModelsResponse, name: &str) -> Option<pb::ModelState> {
    list.models
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.state())
}

#[tokio::test]
async fn every_rpc_is_answered_by_the_model_it_names() {
    let repo = repository("every-rpc", &[("tiny", TINY), ("base-224", BASE)]);
    let server = Server::ready_model(&repo.0, &["--default-model", "tiny"], &[]).await;
    let mut client = server.client().await;

    let listed = list(&server).await;
    assert_eq!(listed.default_model, "tiny");
    let names: Vec<&str> = listed.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["base-224", "tiny"], "in name order");
    for m in &listed.models {
        assert_eq!(m.state(), pb::ModelState::Ready, "{}", m.name);
        assert!(m.serving && m.reason.is_empty(), "{m:?}");
        let info = m.info.as_ref().expect("info of a model serving");
        assert_eq!(info.name, m.name);
        assert!(info.parameter_bytes > 0, "{info:?}");
    }

    for (name, var) in [("tiny", TINY), ("base-224", BASE)] {
        let want = want(var);
        let n = want.len();
        let info = client
            .get_model_info(pb::GetModelInfoRequest { model: name.into() })
            .await
            .expect("model info")
            .into_inner();
        assert_eq!((info.name.as_str(), info.model_id), (name, model_id(var)));
        let classified = client.classify(classify(name)).await.expect("classify");
        assert_close(&by_index(&classified.into_inner().scores, n), &want);
        let uploaded = client
            .upload(tokio_stream::iter(upload(name)))
            .await
            .expect("upload");
        assert_close(&by_index(&uploaded.into_inner().scores, n), &want);
        let streamed: Vec<pb::StreamResponse> = client
            .stream(tokio_stream::iter(vec![
                stream_config(name),
                frame(1, asset(PHOTO)),
            ]))
            .await
            .expect("stream")
            .into_inner()
            .map(|r| r.expect("stream result"))
            .collect()
            .await;
        assert_close(&by_index(&streamed[0].scores, n), &want);
        let texts = client
            .embed_text(pb::EmbedTextRequest {
                model: name.into(),
                texts: labels(),
            })
            .await
            .expect("embed text")
            .into_inner();
        let images = client
            .embed_image(pb::EmbedImageRequest {
                max_num_patches: 0,
                model: name.into(),
                images: vec![encoded(asset(PHOTO)).unwrap()],
            })
            .await
            .expect("embed image")
            .into_inner();
        for e in texts.embeddings.iter().chain(&images.embeddings) {
            assert_eq!(e.values.len(), info.embedding_dim as usize, "{name}");
        }
        let images_done = server
            .metric(&format!(
                "siglip_images_processed_total{{model=\"{name}\"}}"
            ))
            .await;
        assert!(images_done >= 4.0, "{name}: {images_done} images counted");
        assert_eq!(
            server
                .metric(&format!(
                    "siglip_grpc_requests_total{{method=\"Classify\",code=\"OK\",model=\"{name}\"}}"
                ))
                .await,
            1.0
        );
        assert_eq!(
            server.health(&format!("siglip.v1.Siglip/{name}")).await,
            ServingStatus::Serving
        );
    }

    // No model named: the default one.
    let default = client.classify(classify("")).await.expect("classify");
    assert_close(&by_index(&default.into_inner().scores, 4), &want(TINY));

    // An unknown name, in every place a request can carry one.
    let unknown = "no model named \"nope\" on this server (models: base-224, tiny)";
    let status = client.classify(classify("nope")).await.unwrap_err();
    assert_status("Classify", &status, Code::NotFound, unknown);
    let status = client
        .embed_text(pb::EmbedTextRequest {
            model: "nope".into(),
            texts: labels(),
        })
        .await
        .unwrap_err();
    assert_status("EmbedText", &status, Code::NotFound, unknown);
    let status = client
        .get_model_info(pb::GetModelInfoRequest {
            model: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_status("GetModelInfo", &status, Code::NotFound, unknown);
    let status = client
        .upload(tokio_stream::iter(upload("nope")))
        .await
        .unwrap_err();
    assert_status("Upload", &status, Code::NotFound, unknown);
    let mut stream = client
        .stream(tokio_stream::iter(vec![stream_config("nope")]))
        .await
        .expect("stream opens")
        .into_inner();
    let status = stream.next().await.expect("an answer").unwrap_err();
    assert_status("Stream", &status, Code::NotFound, unknown);
    // A client cannot add series by naming models that do not exist.
    let metrics = crate::common::server::metrics_text(&server.metrics_addr).await;
    assert!(!metrics.contains("nope"), "a made-up name became a label");
    // Nor does an unknown name have a health entry.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "siglip.v1.Siglip/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn several_models_and_no_default_refuse_a_request_that_names_none() {
    let repo = repository("no-default", &[("a", TINY), ("b", TINY)]);
    let server = Server::ready_model(&repo.0, &[], &[]).await;
    let mut client = server.client().await;
    let status = client.classify(classify("")).await.unwrap_err();
    assert_status(
        "no model",
        &status,
        Code::InvalidArgument,
        "several models and no default (--default-model): name one in the request's `model` field (a, b)",
    );
    assert_eq!(list(&server).await.default_model, "");
    client.classify(classify("b")).await.expect("named");
}

#[tokio::test]
async fn a_model_still_loading_is_unavailable_with_a_retry_hint() {
    let repo = repository("loading", &[("tiny", TINY), ("base-224", BASE)]);
    // Many warm-up passes: base-224 takes seconds to be ready, tiny does not.
    let server = Server::spawn_model(&repo.0, &["--warmup-rounds", "12"], &[]);
    let mut client = server.client().await;
    let before = list(&server).await;
    assert_eq!(state(&before, "base-224"), Some(pb::ModelState::Loading));
    let status = client
        .embed_text(pb::EmbedTextRequest {
            model: "base-224".into(),
            texts: labels(),
        })
        .await
        .unwrap_err();
    let after = list(&server).await;
    assert_eq!(
        state(&after, "base-224"),
        Some(pb::ModelState::Loading),
        "the call above was made while the model loaded"
    );
    assert_status(
        "loading",
        &status,
        Code::Unavailable,
        "model \"base-224\" is still loading",
    );
    assert!(status.get_details_retry_info().is_some(), "{status:?}");
    assert!(!after
        .models
        .iter()
        .any(|m| m.name == "base-224" && m.serving));
    assert_eq!(
        server.health("siglip.v1.Siglip/base-224").await,
        ServingStatus::NotServing
    );
    assert_eq!(server.health("").await, ServingStatus::NotServing);
    server.wait_for(ServingStatus::Serving).await;
    let ready = list(&server).await;
    assert!(ready
        .models
        .iter()
        .all(|m| m.state() == pb::ModelState::Ready && m.serving));
    assert_eq!(
        server.health("siglip.v1.Siglip/base-224").await,
        ServingStatus::Serving
    );
}

/// Under a flood of work for base-224, a caller of tiny is answered within twice its idle
/// latency plus one of base-224's batches: the models have their own queues, and take turns on
/// the device one batch at a time. All three figures are measured here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_of_one_model_is_answered_while_another_is_flooded() {
    const FLOODERS: usize = 8;
    let repo = repository("fair-models", &[("tiny", TINY), ("base-224", BASE)]);
    let server = Server::ready_model(
        &repo.0,
        &["--default-model", "tiny", "--max-batch-size", "4"],
        &[],
    )
    .await;
    let idle = server.idle_latency(5).await;

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let batch_us = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for _ in 0..FLOODERS {
        let mut client = server.client().await;
        let (stop, answered, batch_us) = (stop.clone(), answered.clone(), batch_us.clone());
        flood.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply = client
                    .classify(classify("base-224"))
                    .await
                    .expect("a flooding call is answered");
                let timings = reply.into_inner().timings.expect("timings");
                batch_us.fetch_max(timings.inference_us as usize, Ordering::Relaxed);
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The flood is on once base-224 has answered a few rounds of it.
    wait_until("the flood under way", async || {
        answered.load(Ordering::Relaxed) >= 2 * FLOODERS
    })
    .await;
    let mut waits = Vec::new();
    for _ in 0..5 {
        waits.push(server.served().await);
    }
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.expect("flooder");
    }
    let batch = Duration::from_micros(batch_us.load(Ordering::Relaxed) as u64);
    let bound = idle * 2 + batch;
    let slowest = *waits.iter().max().unwrap();
    assert!(
        slowest <= bound,
        "tiny's caller waited {slowest:?} under base-224's flood; bound 2 × idle {idle:?} + one \
         base-224 batch {batch:?} = {bound:?} (all: {waits:?})"
    );
}

/// Hot swap under load: tiny's folder is pointed at another model (SigLIP 2) under a running
/// stream and a stream of unary calls. No call fails; the new version answers once warm; the
/// stream carries on, and moves to the new version with its next config. Then base-224's
/// folder is swapped for a small model and its memory goes back to the system; a broken new
/// version leaves the old one serving; a removed folder is unloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn models_are_swapped_under_load_without_a_failed_call() {
    let repo = repository("swap", &[("tiny", TINY), ("base-224", BASE)]);
    let server = Server::ready_model(
        &repo.0,
        &[
            "--default-model",
            "tiny",
            "--model-repository-poll-seconds",
            "1",
        ],
        &[],
    )
    .await;
    let (old, new) = (want(TINY), want(SIGLIP2));
    assert!(
        old.iter().zip(&new).any(|(a, b)| (a - b).abs() > 1e-3),
        "the two versions must answer differently: {old:?} {new:?}"
    );

    // Unary calls, one after the other, for the whole swap: every one must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let unary = {
        let mut client = server.client().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = client
                    .classify(classify("tiny"))
                    .await
                    .expect("no call fails");
                answers.push(by_index(&reply.into_inner().scores, 4));
            }
            answers
        })
    };
    // A stream on tiny, frame after frame.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(stream_config("tiny")).await.unwrap();
    let mut results = server
        .client()
        .await
        .stream(Request::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
        .await
        .expect("stream")
        .into_inner();
    let mut next_frame = 0u64;
    let mut frame_scores = async |tx: &tokio::sync::mpsc::Sender<pb::StreamRequest>| {
        next_frame += 1;
        tx.send(frame(next_frame, asset(PHOTO))).await.unwrap();
        let result = results.next().await.expect("a result").expect("no error");
        assert_eq!(result.frame_id, next_frame);
        (result.config_generation, by_index(&result.scores, 4))
    };
    assert_close(&frame_scores(&tx).await.1, &old);

    link(&generated(SIGLIP2), &repo.0.join("tiny"));
    let siglip2 = model_id(SIGLIP2);
    let mut client = server.client().await;
    wait_until("the new version serving", async || {
        let info = client
            .get_model_info(pb::GetModelInfoRequest {
                model: "tiny".into(),
            })
            .await
            .expect("info")
            .into_inner();
        info.model_id == siglip2
    })
    .await;
    // The stream's frames stay with the version of its config...
    let (generation, scores) = frame_scores(&tx).await;
    assert_eq!(generation, 0);
    assert_close(&scores, &old);
    // ...and a new config moves it to the new one.
    tx.send(stream_config("tiny")).await.unwrap();
    let (generation, scores) = frame_scores(&tx).await;
    assert_eq!(generation, 1);
    assert_close(&scores, &new);
    // New unary calls get the new version.
    let reply = client.classify(classify("")).await.expect("classify");
    assert_close(&by_index(&reply.into_inner().scores, 4), &new);
    stop.store(true, Ordering::Relaxed);
    let answers = unary.await.expect("unary caller");
    let (first, last) = (answers.first().unwrap(), answers.last().unwrap());
    assert_close(first, &old);
    assert_close(last, &new);
    drop(tx);
    assert!(results.next().await.is_none(), "the stream ends cleanly");
    assert_eq!(
        server
            .metric(r#"siglip_model_swaps_total{model="tiny"}"#)
            .await,
        1.0
    );

    // The memory of a version swapped out goes back: base-224 (hundreds of MB) for the tiny
    // SigLIP 2.
    let listed = list(&server).await;
    let base_bytes = listed
        .models
        .iter()
        .find(|m| m.name == "base-224")
        .and_then(|m| m.info.as_ref())
        .expect("base-224 serving")
        .parameter_bytes;
    assert!(
        base_bytes > 300 << 20,
        "base-224's float32 parameters are hundreds of MiB, not {base_bytes} bytes"
    );
    let before = server.rss();
    link(&generated(SIGLIP2), &repo.0.join("base-224"));
    let mut lowest = before;
    let freed = Instant::now();
    wait_until("base-224's memory returned", async || {
        lowest = lowest.min(server.rss());
        before.saturating_sub(lowest) >= base_bytes / 2
    })
    .await;
    eprintln!(
        "RSS {} MB → {} MB in {:?} after swapping out base-224 ({} MB of parameters)",
        before >> 20,
        lowest >> 20,
        freed.elapsed(),
        base_bytes >> 20
    );

    // A broken new version: the old one keeps serving, and the model is marked FAILED.
    let broken = Scratch::new("swap-broken");
    std::fs::write(broken.0.join("manifest.json"), "{\"format_version\": 1}").unwrap();
    link(&broken.0, &repo.0.join("tiny"));
    wait_until("the broken version refused", async || {
        state(&list(&server).await, "tiny") == Some(pb::ModelState::Failed)
    })
    .await;
    let tiny = list(&server).await;
    let tiny = tiny.models.iter().find(|m| m.name == "tiny").unwrap();
    assert!(
        tiny.serving && tiny.reason.contains("manifest.json"),
        "{tiny:?}"
    );
    assert_eq!(tiny.info.as_ref().unwrap().model_id, siglip2);
    let reply = client
        .classify(classify("tiny"))
        .await
        .expect("still served");
    assert_close(&by_index(&reply.into_inner().scores, 4), &new);
    assert_eq!(
        server
            .metric(r#"siglip_model_load_failures_total{model="tiny"}"#)
            .await,
        1.0
    );
    assert_eq!(
        server.health("siglip.v1.Siglip/tiny").await,
        ServingStatus::Serving
    );

    // A removed folder: drained, unloaded, and then unknown.
    std::fs::remove_file(repo.0.join("base-224")).unwrap();
    wait_until("base-224 gone", async || {
        state(&list(&server).await, "base-224").is_none()
    })
    .await;
    let status = client.classify(classify("base-224")).await.unwrap_err();
    assert_status("removed", &status, Code::NotFound, "(models: tiny)");
    assert_eq!(server.health("").await, ServingStatus::Serving);
}

/// `--max-model-bytes` refuses a model before loading it, naming the figures; bad repositories
/// stop the start with what is wrong.
#[tokio::test]
async fn a_model_over_the_byte_budget_or_a_bad_repository_stops_the_start() {
    let repo = repository("max-bytes", &[("tiny", TINY), ("base-224", BASE)]);
    let empty = Scratch::new("empty-repo");
    let towers = |var: &str| -> u64 {
        let dir = generated(var);
        let manifest = Manifest::load(&dir).expect("manifest");
        let files = &manifest.towers["float32"];
        [&files.vision, &files.text]
            .iter()
            .map(|f| std::fs::metadata(dir.join(f)).unwrap().len())
            .sum()
    };
    // Room for either model, not for both.
    let budget = (towers(TINY) + towers(BASE) - 1).to_string();
    let cases: [(&Path, Vec<&str>, &str); 3] = [
        (
            &repo.0,
            vec!["--max-model-bytes", &budget],
            "bytes would pass --max-model-bytes",
        ),
        (
            &repo.0,
            vec!["--default-model", "nope"],
            "--default-model \"nope\" is not a model of the repository (it has: base-224, tiny)",
        ),
        (&empty.0, vec![], "has no model folders"),
    ];
    for (dir, flags, want) in cases {
        let text = failed_start(dir, &flags).await;
        assert!(text.contains(want), "{want}: {text}");
    }
    // The budget's message names the model refused and the figures.
    let text = failed_start(&repo.0, &["--max-model-bytes", &budget]).await;
    assert!(
        (text.contains("base-224: it needs ") || text.contains("tiny: it needs "))
            && text.contains(&format!("--max-model-bytes {budget}")),
        "{text}"
    );
}

/// The log of a server that must refuse to start (a test failure, not a hang, if it starts).
async fn failed_start(dir: &Path, flags: &[&str]) -> String {
    let mut command =
        tokio::process::Command::from(crate::common::server::serve_command(dir, flags));
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        command.kill_on_drop(true).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{flags:?}: the server started (still running after 120 s)"))
    .expect("run");
    assert!(!out.status.success(), "{flags:?}: exited 0");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
