//! The gRPC API end to end: a real server process with the tiny random-weight model, called by
//! a tonic client. Expected probabilities come from the core runtime on the same inputs.
//!
//! One test binary (each links libtorch), a module per RPC or concern:
//! - `classify`: Classify's answers, options, raw frames and image conventions;
//! - `upload`: Upload, for images over the message limit, and its protocol;
//! - `stream`: Stream's delivery modes, protocol, stream limit and lifetime;
//! - `fair`: fair shares and fair waiting, judged against capacity measured in the same run;
//! - `policy`: Stream frame policy (max_fps, max_age_ms) and drop counts by reason;
//! - `regions`: regions of stream frames, per-region answers and every refusal;
//! - `events`: smoothing, enter/leave events, events-only mode, against a reference;
//! - `embed`: EmbedImage, EmbedText and GetModelInfo;
//! - `errors`: bad input and the status it gets, deadlines, a full queue;
//! - `lifecycle`: health, reflection, shutdown, flags from the environment.
//! - `models`: several models in one server (a repository): every RPC per model, the default
//!   model, unknown and loading models, per-model health, fairness between models, hot swaps;
//! - `oip`: the Open Inference Protocol beside siglip.v1: ModelInfer against Classify, inference
//!   streams in order with in-stream errors, and the stream limits both APIs share;
//! - `naflex`: SigLIP 2 NaFlex against transformers at every patch budget, batch-mates,
//!   regions, and every refusal of a budget;
//! - `health`: health follows the device (the faulty test model), out-of-memory retries.
//! - `transport`: hostile clients at the transport (idle streams, non-readers, stalled uploads);
//! - `connection`: the HTTP/2 settings seen on the wire (streams, resets, keepalive, age);
//! - `abuse_decode`: hostile JPEGs, large images and floods of unique labels, against a
//!   well-behaved caller;
//! - `tls`: TLS and mutual TLS handshakes, refusals, certificate rotation, health over TLS;
//! - `auth`: bearer tokens, reflection switched off, token rotation, no secrets in the log;
//! - `traces`: OpenTelemetry spans as a real OTLP receiver gets them: propagation, stages,
//!   batches, frames, sampling, a collector that goes away, nothing secret exported.
//!
//! The helpers they share are here.

#[path = "../common/mod.rs"]
mod common;

mod abuse_decode;
mod auth;
mod classify;
mod connection;
mod embed;
mod errors;
mod events;
mod fair;
mod health;
mod lifecycle;
mod models;
mod naflex;
mod oip;
mod policy;
mod regions;
mod stream;
mod tls;
mod traces;
mod transport;
mod upload;

use siglip_serve::grpc::pb::{self, siglip_client::SiglipClient, stream_request::Msg};
use siglip_serve::model::{
    image::{decode, Convention, ImageLimits, ImageProcessor, Transparency},
    scores::sigmoid,
};
use tokio_stream::StreamExt;
use tonic::{transport::Channel, Code};

const LABELS: [&str; 4] = [
    "a photo of a cat",
    "an astronaut",
    "a cup of coffee",
    "a rocket",
];

fn labels() -> Vec<String> {
    LABELS.iter().map(|s| s.to_string()).collect()
}

fn encoded(bytes: Vec<u8>) -> Option<pb::Image> {
    Some(pb::Image {
        source: Some(pb::image::Source::Encoded(bytes)),
    })
}

/// A Classify request for a raw frame of `width`×`height` pixels in `format`, with [`LABELS`].
fn raw_request(
    width: u32,
    height: u32,
    format: pb::PixelFormat,
    data: Vec<u8>,
) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        model: String::new(),
        image: Some(pb::Image {
            source: Some(pb::image::Source::Raw(pb::RawFrame {
                width,
                height,
                format: format as i32,
                data,
            })),
        }),
        texts: labels(),
        options: None,
    }
}

/// Probabilities by label index, straight from the core runtime.
fn expected(image: &[u8], texts: &[String]) -> Vec<f32> {
    expected_with(image, texts, Convention::Processor)
}

/// [`expected`] for an image taken to RGB by `convention`.
fn expected_with(image: &[u8], texts: &[String], convention: Convention) -> Vec<f32> {
    probabilities(
        decode(
            image,
            &ImageLimits::default(),
            convention,
            Transparency::Composite,
        )
        .expect("decode"),
        texts,
    )
}

fn probabilities(rgb: image::RgbImage, texts: &[String]) -> Vec<f32> {
    probabilities_by(rgb, texts, ImageProcessor::Pil)
}

/// [`probabilities`] with `processor`'s preprocessing.
fn probabilities_by(rgb: image::RgbImage, texts: &[String], processor: ImageProcessor) -> Vec<f32> {
    probabilities_from("SIGLIP_TEST_MODEL_DIR", rgb, texts, processor)
}

/// [`probabilities_by`] from the model `make test` generated under the variable `var` (the one
/// the server under test runs).
fn probabilities_from(
    var: &str,
    rgb: image::RgbImage,
    texts: &[String],
    processor: ImageProcessor,
) -> Vec<f32> {
    let model = siglip_serve::model::Model::load(&siglip_serve::model::LoadOptions {
        image_processor: processor,
        ..common::cpu_options(var)
    })
    .expect("model");
    let img = model.embed_images(&[rgb]).expect("image");
    let txt = model.embed_texts(texts).expect("texts");
    txt.rows()
        .map(|t| sigmoid(model.head().logit(img.row(0), t)))
        .collect()
}

async fn model_info(client: &mut SiglipClient<Channel>) -> pb::ModelInfo {
    client
        .get_model_info(pb::GetModelInfoRequest::default())
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
        model: String::new(),
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
    encode(&img, image::ImageFormat::Png)
}

/// `img` in `format`, as a client would send it.
fn encode(img: &image::RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode");
    out.into_inner()
}

fn config(texts: &[&str], mode: pb::DeliveryMode) -> pb::StreamRequest {
    pb::StreamRequest {
        msg: Some(Msg::Config(pb::StreamConfig {
            model: String::new(),
            texts: texts.iter().map(|s| s.to_string()).collect(),
            options: None,
            mode: mode as i32,
            ..Default::default()
        })),
    }
}

fn frame(id: u64, image: Vec<u8>) -> pb::StreamRequest {
    pb::StreamRequest {
        msg: Some(Msg::Frame(pb::Frame {
            frame_id: id,
            timestamp_us: id as i64 * 33_000,
            image: encoded(image),
            ..Default::default()
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
            ..Default::default()
        })),
    }
}

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

/// Sends every message, half-closes, and collects every result (none may be an error).
async fn stream_all(
    client: &mut SiglipClient<Channel>,
    messages: Vec<pb::StreamRequest>,
) -> Vec<pb::StreamResponse> {
    stream_request(client, tonic::Request::new(tokio_stream::iter(messages))).await
}

/// [`stream_all`] with a request of the caller's making (its metadata).
async fn stream_request<S>(
    client: &mut SiglipClient<Channel>,
    request: tonic::Request<S>,
) -> Vec<pb::StreamResponse>
where
    S: tokio_stream::Stream<Item = pb::StreamRequest> + Send + 'static,
{
    client
        .stream(request)
        .await
        .expect("stream")
        .into_inner()
        .map(|r| r.expect("result"))
        .collect()
        .await
}
