//! The legitimate traffic: every kind of call in turn, each checked for a complete answer. Any
//! error is unexpected.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Instant,
};

use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::{failed, Soak};
use crate::grpc::pb::{self, siglip_client::SiglipClient};

/// One legitimate caller: every kind of call in turn until the end.
pub(super) async fn legitimate(soak: Arc<Soak>, mut client: SiglipClient<Channel>, caller: usize) {
    let mut i = caller;
    while soak.running() {
        let started = Instant::now();
        let (what, result, timed) = match i % 6 {
            0 => ("Classify", classify(&soak, &mut client, i).await, true),
            1 => ("Upload", upload(&soak, &mut client, i).await, true),
            2 => ("EmbedImage", embed_image(&soak, &mut client, i).await, true),
            3 => ("EmbedText", embed_text(&soak, &mut client).await, true),
            4 => (
                "every-frame Stream",
                stream(&soak, &mut client, pb::DeliveryMode::EveryFrame, i).await,
                false,
            ),
            _ => (
                "latest-only Stream",
                stream(&soak, &mut client, pb::DeliveryMode::LatestOnly, i).await,
                false,
            ),
        };
        soak.requests.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) if timed => soak
                .latencies_ms
                .lock()
                .expect("tally lock")
                .push(started.elapsed().as_secs_f64() * 1e3),
            Ok(()) => {}
            Err(why) => soak.unexpected(&format!("{what}: {why}")),
        }
        i += 1;
    }
}

type Outcome = Result<(), String>;

async fn classify(soak: &Soak, client: &mut SiglipClient<Channel>, i: usize) -> Outcome {
    let response = client
        .classify(pb::ClassifyRequest {
            model: String::new(),
            image: soak.encoded(i),
            texts: soak.label_set(i),
            options: None,
        })
        .await
        .map_err(failed)?;
    check_scores(&response.into_inner().scores, soak.label_set(i).len())
}

async fn upload(soak: &Soak, client: &mut SiglipClient<Channel>, i: usize) -> Outcome {
    let image = soak.image(i);
    let mut messages = vec![pb::UploadRequest {
        msg: Some(pb::upload_request::Msg::Header(pb::UploadHeader {
            model: String::new(),
            texts: soak.label_set(i),
            options: None,
            total_bytes: image.len() as u64,
        })),
    }];
    messages.extend(image.chunks(64 << 10).map(|c| pb::UploadRequest {
        msg: Some(pb::upload_request::Msg::Chunk(c.to_vec())),
    }));
    let response = client
        .upload(tokio_stream::iter(messages))
        .await
        .map_err(failed)?;
    check_scores(&response.into_inner().scores, soak.label_set(i).len())
}

async fn embed_image(soak: &Soak, client: &mut SiglipClient<Channel>, i: usize) -> Outcome {
    let response = client
        .embed_image(pb::EmbedImageRequest {
            model: String::new(),
            images: vec![
                soak.encoded(i).expect("image"),
                soak.encoded(i + 1).expect("image"),
            ],
            max_num_patches: 0,
        })
        .await
        .map_err(failed)?;
    let n = response.into_inner().embeddings.len();
    (n == 2)
        .then_some(())
        .ok_or(format!("{n} embeddings for 2 images"))
}

/// Labels no one has sent before: the text tower runs for each.
async fn embed_text(soak: &Soak, client: &mut SiglipClient<Channel>) -> Outcome {
    let n = soak.fresh.fetch_add(1, Ordering::Relaxed);
    let texts: Vec<String> = (0..4)
        .map(|k| format!("a photo of thing {n} number {k}"))
        .collect();
    let response = client
        .embed_text(pb::EmbedTextRequest {
            model: String::new(),
            texts,
        })
        .await
        .map_err(failed)?;
    let n = response.into_inner().embeddings.len();
    (n == 4)
        .then_some(())
        .ok_or(format!("{n} embeddings for 4 texts"))
}

fn check_scores(scores: &[pb::LabelScore], labels: usize) -> Outcome {
    if scores.len() != labels {
        return Err(format!("{} scores for {labels} labels", scores.len()));
    }
    if scores.iter().any(|s| !(0.0..=1.0).contains(&s.probability)) {
        return Err("a probability outside [0, 1]".into());
    }
    Ok(())
}

/// Frames sent on each legitimate stream: half under one label set, half under the other.
const FRAMES: u64 = 8;

/// A stream that switches label sets after half its frames. Every frame must be answered in order
/// (every-frame), or at least the last one (latest-only), without an in-band error.
async fn stream(
    soak: &Soak,
    client: &mut SiglipClient<Channel>,
    mode: pb::DeliveryMode,
    i: usize,
) -> Outcome {
    let config = |i: usize| pb::StreamRequest {
        msg: Some(pb::stream_request::Msg::Config(pb::StreamConfig {
            model: String::new(),
            texts: soak.label_set(i),
            options: None,
            mode: mode as i32,
            ..Default::default()
        })),
    };
    let mut messages = vec![config(i)];
    for id in 0..FRAMES {
        if id == FRAMES / 2 {
            messages.push(config(i + 1));
        }
        messages.push(pb::StreamRequest {
            msg: Some(pb::stream_request::Msg::Frame(pb::Frame {
                frame_id: id,
                timestamp_us: id as i64 * 33_000,
                image: soak.encoded(i + id as usize),
                ..pb::Frame::default()
            })),
        });
    }
    let mut responses = client
        .stream(tokio_stream::iter(messages))
        .await
        .map_err(failed)?
        .into_inner();
    let mut ids = Vec::new();
    while let Some(response) = responses.next().await {
        let response = response.map_err(failed)?;
        if let Some(e) = response.error {
            return Err(format!("frame {}: {}", response.frame_id, e.message));
        }
        ids.push(response.frame_id);
    }
    let complete = match mode {
        pb::DeliveryMode::LatestOnly => ids.last() == Some(&(FRAMES - 1)),
        _ => ids == (0..FRAMES).collect::<Vec<_>>(),
    };
    complete
        .then_some(())
        .ok_or(format!("frames answered: {ids:?}"))
}
