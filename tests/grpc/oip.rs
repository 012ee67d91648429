//! The Open Inference Protocol (`inference.GRPCInferenceService`) beside siglip.v1: ModelInfer
//! equal to Classify, ModelStreamInfer in order with in-stream errors, the stream limits it
//! shares with siglip.v1 streams, and the decode budget held against large images sent through
//! it. tritonclient's view of it is `tests/python/test_oip.py`.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering},
    Arc,
};
use std::time::{Duration, Instant};

use siglip_serve::grpc::oip::{
    pb::{
        grpc_inference_service_client::GrpcInferenceServiceClient,
        infer_parameter::ParameterChoice,
        model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
        InferParameter, ModelInferRequest, ModelInferResponse,
    },
    tensors::join_bytes,
};
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code};

use crate::abuse_decode::{large_jpeg, PixelBudget};
use crate::common::{
    asset,
    server::{long_labels, Server},
};
use crate::{assert_status, by_index, classify_request, labels, open_stream};

/// The name the test server gives its model: its directory's (`tiny`, or `base-224` under
/// `TEST_MODEL`).
fn model_name() -> String {
    let dir = crate::common::generated("SIGLIP_TEST_MODEL_DIR");
    let name = dir.file_name().expect("a model directory");
    name.to_string_lossy().into_owned()
}

pub(crate) async fn oip(server: &Server) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(server.channel().await)
}

fn bytes_input(name: &str, elements: &[&[u8]]) -> (InferInputTensor, Vec<u8>) {
    let input = InferInputTensor {
        name: name.into(),
        datatype: "BYTES".into(),
        shape: vec![elements.len() as i64],
        ..Default::default()
    };
    (input, join_bytes(elements.iter().copied()))
}

/// A zero-shot request for `images` against [`labels`], framed as tritonclient frames it.
pub(crate) fn zero_shot(model: &str, id: &str, images: &[&[u8]]) -> ModelInferRequest {
    let texts = labels();
    let texts: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
    let (image, image_raw) = bytes_input("IMAGE", images);
    let (text, text_raw) = bytes_input("TEXT", &texts);
    ModelInferRequest {
        model_name: model.into(),
        id: id.into(),
        inputs: vec![image, text],
        raw_input_contents: vec![image_raw, text_raw],
        ..Default::default()
    }
}

/// An output's FP32 values, found by its name in `outputs`.
pub(crate) fn floats(response: &ModelInferResponse, name: &str) -> Vec<f32> {
    let at = response
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output {name}"));
    response.raw_output_contents[at]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[tokio::test]
async fn model_infer_answers_what_classify_answers_and_is_counted_by_model() {
    let server = Server::ready(&[]).await;
    let (cat, rocket) = (asset("chelsea_progressive.jpg"), asset("rocket_420.jpg"));
    let response = oip(&server)
        .await
        .model_infer(zero_shot("zero-shot", "call-1", &[&cat, &rocket]))
        .await
        .expect("ModelInfer")
        .into_inner();
    assert_eq!(
        (response.id.as_str(), response.model_version.as_str()),
        ("call-1", "1")
    );
    let probabilities = floats(&response, "PROBABILITY");
    assert_eq!(response.outputs[0].shape, vec![2, labels().len() as i64]);
    let mut client = server.client().await;
    for (row, image) in [cat, rocket].into_iter().enumerate() {
        let classified = client
            .classify(classify_request(image, labels()))
            .await
            .expect("Classify")
            .into_inner();
        let row = &probabilities[row * labels().len()..][..labels().len()];
        let want = by_index(&classified.scores, labels().len());
        for (got, want) in row.iter().zip(&want) {
            assert!((got - want).abs() <= 1e-6, "{row:?} != {want:?}");
        }
    }
    let counted = server
        .metric(&format!(
            "siglip_grpc_requests_total{{method=\"ModelInfer\",code=\"OK\",model=\"{}\"}}",
            model_name()
        ))
        .await;
    assert_eq!(counted, 1.0);
}

/// With the server's text cache off, the labels a stream sent last are still embedded once.
#[tokio::test]
async fn an_inference_stream_answers_in_order_and_goes_on_after_a_bad_request() {
    let server = Server::ready(&["--text-cache-size", "0"]).await;
    let text_passes = async || {
        server
            .metric(r#"siglip_inference_duration_seconds_count{tower="text"}"#)
            .await
    };
    let passes_before = text_passes().await;
    let cat = asset("chelsea_progressive.jpg");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = oip(&server)
        .await
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("ModelStreamInfer")
        .into_inner();
    // The first request is answered before the others are sent: they would otherwise run
    // beside it, before its labels are remembered.
    tx.send(zero_shot(
        &format!("{}-zero-shot", model_name()),
        "0",
        &[&cat],
    ))
    .await
    .unwrap();
    let mut responses = vec![answers.next().await.expect("answer 0")];
    for request in [
        zero_shot("no-such-model", "1", &[&cat]),
        zero_shot("zero-shot", "2", &[b"not an image"]),
        zero_shot("zero-shot", "3", &[&cat]),
    ] {
        tx.send(request).await.unwrap();
    }
    drop(tx);
    while let Some(response) = answers.next().await {
        responses.push(response);
    }
    let responses: Vec<_> = responses
        .into_iter()
        .map(|r| r.expect("the stream does not end on a bad request"))
        .collect();
    let ids: Vec<_> = responses
        .iter()
        .map(|r| r.infer_response.as_ref().expect("response").id.as_str())
        .collect();
    assert_eq!(ids, ["0", "1", "2", "3"]);
    assert!(responses[1]
        .error_message
        .contains("Request for unknown model: 'no-such-model'"));
    assert!(responses[2].error_message.contains("not an image"));
    assert!(responses[0].error_message.is_empty() && responses[3].error_message.is_empty());
    let first = floats(responses[0].infer_response.as_ref().unwrap(), "PROBABILITY");
    let last = floats(responses[3].infer_response.as_ref().unwrap(), "PROBABILITY");
    assert_eq!(first, last);
    assert_eq!(
        text_passes().await - passes_before,
        1.0,
        "the stream's labels went through the text tower again"
    );
}

#[tokio::test]
async fn inference_streams_share_the_stream_limit_and_lifetime_with_siglip_streams() {
    let server = Server::ready(&["--max-streams", "1", "--max-stream-seconds", "2"]).await;
    let mut client = server.client().await;
    let (_tx, _open) = open_stream(&mut client, asset("chelsea_progressive.jpg")).await;
    let refused = match oip(&server)
        .await
        .model_stream_infer(tokio_stream::pending())
        .await
    {
        Err(status) => status,
        Ok(response) => match response.into_inner().next().await {
            Some(Err(status)) => status,
            other => panic!("a second stream was not refused: {other:?}"),
        },
    };
    assert_status(
        "inference stream over --max-streams",
        &refused,
        Code::ResourceExhausted,
        "--max-streams",
    );
    drop((_tx, _open));
    // Once the slot is free, an inference stream that keeps its side open ends at its lifetime.
    let opening = Instant::now();
    let mut stream = loop {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(zero_shot(
            "zero-shot",
            "a",
            &[&asset("chelsea_progressive.jpg")],
        ))
        .await
        .unwrap();
        let opened = oip(&server)
            .await
            .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await;
        // The first stream's slot is freed as its task ends: retry until it is.
        let refused = match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                match stream.next().await {
                    Some(Ok(answered)) => {
                        assert!(answered.error_message.is_empty(), "{answered:?}");
                        break (stream, tx);
                    }
                    other => other.expect("an answer").expect_err("not an answer"),
                }
            }
            Err(status) => status,
        };
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            opening.elapsed() < Duration::from_secs(30),
            "the first inference stream's slot was still taken after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let end = stream.0.next().await.expect("end").expect_err("lifetime");
    assert_status("lifetime", &end, Code::Unavailable, "maximum lifetime");
    assert!(opening.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn a_silent_inference_stream_ends_with_deadline_exceeded() {
    let server = Server::ready(&["--first-message-timeout-seconds", "1"]).await;
    let started = Instant::now();
    let end = oip(&server)
        .await
        .model_stream_infer(tokio_stream::pending())
        .await
        .expect("open")
        .into_inner()
        .next()
        .await
        .expect("end")
        .expect_err("timeout");
    assert_status(
        "silent stream",
        &end,
        Code::DeadlineExceeded,
        "--first-message-timeout-seconds",
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Large but legal images sent through ModelInfer, several per request from several callers:
/// each image is charged its pixels against `--max-decoding-pixels` as siglip.v1's are, so one
/// decodes at a time (four could, by the threads), memory stays bounded, and a Classify caller
/// waits behind at most the large images queued before its own.
#[tokio::test]
async fn large_images_through_model_infer_decode_within_the_pixel_budget() {
    const ATTACKERS: usize = 2;
    const PER_REQUEST: usize = 2;
    let budget = PixelBudget::start(4).await;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for _ in 0..ATTACKERS {
        let mut client = oip(&budget.server).await;
        let (large, stop, served) = (budget.large.clone(), Arc::clone(&stop), Arc::clone(&served));
        attackers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let images = vec![large.as_slice(); PER_REQUEST];
                client
                    .model_infer(zero_shot("zero-shot", "large", &images))
                    .await
                    .expect("legal images are served, in their turn");
                served.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let queued = (ATTACKERS * PER_REQUEST) as u32;
    budget.hold("ModelInfer", queued, &stop, attackers).await;
    assert!(served.load(Ordering::Relaxed) >= ATTACKERS);
}

/// A client that goes away with requests running frees its stream slot and everything its
/// requests held: the requests are dropped, not left to finish for nobody. Of its 16 large
/// images (seconds of decoding), only those decoding when the server noticed are decoded after
/// it left: one per preprocessing thread, and as many again for each decode's time the server
/// took to notice (the time until its slot was free again, measured in the same run).
#[tokio::test]
async fn a_client_that_leaves_an_inference_stream_frees_its_slot_and_budgets() {
    const THREADS: u32 = 2;
    let server = Server::ready(&[
        "--max-streams",
        "1",
        "--stream-pipeline",
        "4",
        "--preprocess-threads",
        &THREADS.to_string(),
    ])
    .await;
    let large = large_jpeg(3000);
    let decode = server
        .client()
        .await
        .classify(classify_request(large.clone(), labels()))
        .await
        .expect("a large image alone")
        .into_inner()
        .timings
        .map(|t| Duration::from_micros(t.preprocess_us))
        .expect("timings");
    let preprocessed = async || {
        server
            .metric("siglip_preprocess_duration_seconds_count")
            .await
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut client = oip(&server).await;
    let answers = client
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("open")
        .into_inner();
    for i in 0..4 {
        let images = vec![large.as_slice(); 4];
        tx.send(zero_shot("zero-shot", &i.to_string(), &images))
            .await
            .unwrap();
    }
    crate::common::wait_until("every request of the stream read", async || {
        server.metric("siglip_pending_images").await == 16.0
    })
    .await;
    let at_departure = preprocessed().await;
    drop((tx, answers, client));
    let left = Instant::now();
    // The slot is free once the server has noticed: a new stream is served.
    let cat = asset("chelsea_progressive.jpg");
    let mut again = loop {
        let opened = oip(&server)
            .await
            .model_stream_infer(tokio_stream::iter(vec![zero_shot(
                "zero-shot",
                "again",
                &[&cat],
            )]))
            .await;
        match opened {
            Ok(stream) => break stream.into_inner(),
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    left.elapsed() < Duration::from_secs(30),
                    "the slot stayed taken"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    };
    let noticed = left.elapsed();
    let answered = again.next().await.expect("an answer").expect("served");
    assert!(answered.error_message.is_empty(), "{answered:?}");
    crate::common::wait_until("the stream's images freed", async || {
        server.metric("siglip_pending_images").await == 0.0
    })
    .await;
    // The new stream's image, and whatever was decoding, have been decoded by now.
    let after = preprocessed().await - 1.0 - at_departure;
    let rounds = 1 + noticed.as_micros().div_ceil(decode.as_micros().max(1)) as u32;
    let bound = THREADS * rounds;
    assert!(
        after <= bound as f64,
        "{after} of the departed stream's images were decoded after it left, over {bound} \
         ({THREADS} threads × (1 + {noticed:?} to notice / {decode:?} per decode))"
    );
}

/// A client that stops reading: its requests still finish and free what they hold of the
/// server's budgets (they run on tasks of their own), well before its stream ends at its
/// lifetime and frees its slot. Each answer is large (every one of 256 labels of 2 KB as a
/// classification entry) and the client's flow-control window small, so the server's sends
/// block after a few answers. The labels are cached first: each request is then one small image
/// (a fraction of a second on any test model), against a lifetime of 10 s.
#[tokio::test]
async fn a_client_that_does_not_read_holds_no_budget_and_loses_its_stream_at_the_lifetime() {
    const LIFETIME: Duration = Duration::from_secs(10);
    let server = Server::ready(&[
        "--max-streams",
        "1",
        "--max-stream-seconds",
        &LIFETIME.as_secs().to_string(),
    ])
    .await;
    let small_window = server.small_window_channel().await;
    let long_labels = long_labels();
    let texts: Vec<&[u8]> = long_labels.iter().map(|t| t.as_bytes()).collect();
    let image = asset("rocket.bmp");
    let request = |id: usize| {
        let (image_input, image_raw) = bytes_input("IMAGE", &[&image]);
        let (text_input, text_raw) = bytes_input("TEXT", &texts);
        let mut request = ModelInferRequest {
            model_name: "zero-shot".into(),
            id: id.to_string(),
            inputs: vec![image_input, text_input],
            raw_input_contents: vec![image_raw, text_raw],
            ..Default::default()
        };
        request.outputs.push(InferRequestedOutputTensor {
            name: "PROBABILITY".into(),
            parameters: [(
                "classification".to_string(),
                InferParameter {
                    parameter_choice: Some(ParameterChoice::Int64Param(256)),
                },
            )]
            .into(),
        });
        request
    };
    oip(&server)
        .await
        .max_decoding_message_size(64 << 20)
        .model_infer(request(0))
        .await
        .expect("the labels cached");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    for id in 0..64 {
        tx.send(request(id)).await.unwrap();
    }
    let opened = Instant::now();
    let unread = GrpcInferenceServiceClient::new(small_window)
        .max_encoding_message_size(64 << 20)
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens");
    // The server reads requests until its sends block, then runs out what it has read.
    crate::common::wait_until("requests read", async || {
        server.metric("siglip_pending_images").await > 0.0
    })
    .await;
    crate::common::wait_until("the read requests done", async || {
        server.metric("siglip_pending_images").await == 0.0
            && server.metric("siglip_pending_texts").await == 0.0
    })
    .await;
    let done = opened.elapsed();
    eprintln!("unread stream: its requests' budgets free {done:?} after it opened");
    assert!(
        done < LIFETIME - Duration::from_secs(2),
        "the unread stream's requests held their budgets {done:?} (lifetime {LIFETIME:?})"
    );
    // Then the slot comes free at the lifetime.
    crate::common::wait_until("the slot free", async || {
        match oip(&server)
            .await
            .model_stream_infer(tokio_stream::iter(vec![zero_shot(
                "zero-shot",
                "after",
                &[&image],
            )]))
            .await
        {
            Ok(_) => true,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                false
            }
        }
    })
    .await;
    assert!(opened.elapsed() >= LIFETIME - Duration::from_millis(500));
    drop((unread, tx));
}
