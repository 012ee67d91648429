//! Health tells the truth about the device. The server runs the faulty test model
//! (`siglip-export faulty`: its vision tower raises inside libtorch for an all-white image, a
//! "device-side assert", and for a pure red one, "CUDA out of memory"), so that failures are
//! driven by ordinary requests: consecutive failures turn health NOT_SERVING while calls are
//! still answered, a success turns it back, too many make the process exit non-zero, and an
//! out-of-memory batch is answered in halves.

use std::{
    io::{BufRead, BufReader, Read},
    process::Stdio,
    time::{Duration, Instant},
};

use siglip_serve::grpc::pb::{self, siglip_client::SiglipClient};
use siglip_serve::model::image::{ImageProcessor, Transparency};
use tonic::{transport::Channel, Code};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::{self, asset, decode_as_served, server::Server};
use crate::{
    assert_close, assert_status, by_index, classify_request, labels, probabilities_from,
    raw_request,
};

/// The tiny model's size: raw frames this size reach the tower unresized.
const SIDE: u32 = 224;

/// The failures these tests cause are logged as errors, tracebacks and all: not in the test output.
const QUIET: &[(&str, &str)] = &[("RUST_LOG", "off")];

fn faulty_model() -> std::path::PathBuf {
    common::generated("SIGLIP_TEST_FAULTY_MODEL_DIR")
}

/// What the faulty model answers for `photo` with the test labels: tiny's answer, whatever
/// model the other tests serve (`make test TEST_MODEL=…`).
fn expected(photo: &[u8]) -> Vec<f32> {
    let rgb = decode_as_served(photo, Transparency::Composite);
    probabilities_from(
        "SIGLIP_TEST_FAULTY_MODEL_DIR",
        rgb,
        &labels(),
        ImageProcessor::Pil,
    )
}

/// A raw frame of one colour: white makes the faulty tower raise a device-side assert, red
/// an out-of-memory error at any batch size.
fn solid(rgb: [u8; 3]) -> pb::ClassifyRequest {
    let data = rgb.repeat((SIDE * SIDE) as usize);
    raw_request(SIDE, SIDE, pb::PixelFormat::Rgb8, data)
}

async fn both(server: &Server) -> [ServingStatus; 2] {
    [
        server.health("").await,
        server.health("siglip.v1.Siglip").await,
    ]
}

async fn wait_for_both(server: &Server, status: ServingStatus) {
    common::wait_until(&format!("health {status:?}"), async || {
        both(server).await == [status; 2]
    })
    .await;
}

/// A well-behaved Classify of a real photo: answered correctly; returns its latency.
async fn well_behaved(client: &mut SiglipClient<Channel>) -> Duration {
    let photo = asset("chelsea_progressive.jpg");
    let started = Instant::now();
    let reply = client
        .classify(classify_request(photo.clone(), labels()))
        .await
        .expect("the well-behaved call is answered")
        .into_inner();
    let latency = started.elapsed();
    assert_close(&by_index(&reply.scores, labels().len()), &expected(&photo));
    latency
}

async fn device_assert(client: &mut SiglipClient<Channel>) {
    let status = client.classify(solid([255; 3])).await.unwrap_err();
    assert_status("white frame", &status, Code::Internal, "device-side assert");
}

#[tokio::test]
async fn consecutive_failures_turn_health_not_serving_and_a_success_turns_it_back() {
    let server = Server::ready_model(
        &faulty_model(),
        &[
            "--unhealthy-after-failures",
            "3",
            "--exit-after-failures",
            "0",
        ],
        QUIET,
    )
    .await;
    let mut faulty = server.client().await;
    // A well-behaved caller on its own connection.
    let mut caller = server.client().await;
    well_behaved(&mut caller).await;
    let idle = common::slowest_of(3, async || {
        well_behaved(&mut caller).await;
    })
    .await;

    // Two failures, then a success: the count starts again.
    for _ in 0..2 {
        device_assert(&mut faulty).await;
    }
    well_behaved(&mut caller).await;
    assert_eq!(
        server.metric("siglip_inference_consecutive_failures").await,
        0.0
    );
    for n in 1..=3 {
        assert_eq!(
            both(&server).await,
            [ServingStatus::Serving; 2],
            "after {} failures",
            n - 1
        );
        device_assert(&mut faulty).await;
    }
    wait_for_both(&server, ServingStatus::NotServing).await;
    assert_eq!(
        server.metric("siglip_inference_consecutive_failures").await,
        3.0
    );
    assert_eq!(server.metric("siglip_ready").await, 0.0);

    // NOT_SERVING still accepts work, without delay: within twice the idle latency (the
    // slowest of three, so it holds this machine's noise), plus as much again and at least
    // 200 ms for a scheduler's lateness on a loaded machine; a server that held callers until it
    // recovered would exceed that. That success turns health back to SERVING.
    let latency = well_behaved(&mut caller).await;
    let bound = 2 * idle + idle.max(Duration::from_millis(200));
    assert!(
        latency < bound,
        "{latency:?} while NOT_SERVING, idle {idle:?} (bound {bound:?})"
    );
    wait_for_both(&server, ServingStatus::Serving).await;
    assert_eq!(
        server.metric("siglip_inference_consecutive_failures").await,
        0.0
    );
    assert_eq!(server.metric("siglip_ready").await, 1.0);
}

#[tokio::test]
async fn past_the_exit_limit_the_process_exits_non_zero_and_says_why() {
    let mut child = common::server::serve_command(
        &faulty_model(),
        &[
            "--unhealthy-after-failures",
            "1",
            "--exit-after-failures",
            "3",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start siglip-serve");
    // Kept open until the end: the server must not find its stdout closed.
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = stdout
        .by_ref()
        .map(|line| line.expect("stdout"))
        .find_map(|line| {
            line.strip_prefix("siglip-serve: gRPC listening on ")
                .map(String::from)
        })
        .expect("siglip-serve exited before listening");
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut client = SiglipClient::new(channel);
    common::wait_until("the model loading", async || {
        client
            .get_model_info(pb::GetModelInfoRequest::default())
            .await
            .is_ok()
    })
    .await;

    device_assert(&mut client).await;
    device_assert(&mut client).await;
    // The third is answered before the server decides to exit (or refused, once it drains).
    if let Err(status) = client.classify(solid([255; 3])).await {
        assert!(
            matches!(status.code(), Code::Internal | Code::Unavailable),
            "{status:?}"
        );
    }
    drop(client);
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < until,
            "siglip-serve still running after 3 failures"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(1), "{status}");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("3 consecutive inference batches failed (--exit-after-failures 3)"),
        "{log}"
    );
}

#[tokio::test]
async fn an_out_of_memory_batch_is_answered_in_halves_and_only_the_bad_image_fails() {
    // Four callers fill one batch (it closes when full, long before the delay).
    let server = Server::ready_model(
        &faulty_model(),
        &["--max-batch-size", "4", "--max-batch-delay-ms", "5000"],
        QUIET,
    )
    .await;
    let photo = asset("chelsea_progressive.jpg");
    // The labels cached first: otherwise a caller's text job could reach the queue after another
    // caller's image and share its batch, which would then close at one image. Four texts fill a
    // batch, so this does not wait for the delay.
    server
        .client()
        .await
        .embed_text(pb::EmbedTextRequest {
            model: String::new(),
            texts: labels(),
        })
        .await
        .expect("the labels embedded");
    let mut calls = Vec::new();
    for i in 0..4 {
        // Each caller on its own connection.
        let mut client = server.client().await;
        let request = match i {
            2 => solid([255, 0, 0]),
            _ => classify_request(photo.clone(), labels()),
        };
        calls.push(tokio::spawn(async move { client.classify(request).await }));
    }
    let want = expected(&photo);
    for (i, call) in calls.into_iter().enumerate() {
        match (i, call.await.unwrap()) {
            (2, Err(status)) => {
                assert_status("red frame", &status, Code::Internal, "CUDA out of memory")
            }
            (2, Ok(_)) => panic!("the red frame was answered"),
            (_, reply) => {
                let reply = reply.expect("a good image is answered").into_inner();
                assert_eq!(reply.timings.unwrap().batch_size, 4, "one batch of four");
                assert_close(&by_index(&reply.scores, labels().len()), &want);
            }
        }
    }
    // Three of the four were answered: not a failed batch; health stays SERVING.
    assert_eq!(
        server.metric("siglip_inference_consecutive_failures").await,
        0.0
    );
    assert_eq!(both(&server).await, [ServingStatus::Serving; 2]);
}
