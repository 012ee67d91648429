//! The video phase: latest-only streams offered more frames than the server can take. Each
//! result's age (from its frame being sent) is split between the run's first and second half,
//! so that a lag that keeps growing shows.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;

use super::Workload;
use crate::grpc::pb;
use crate::tools::client::Client;
use crate::tools::stats::{percentiles, Percentiles};

#[derive(Debug, Default, Serialize)]
pub struct VideoReport {
    pub streams: usize,
    pub offered_fps: f64,
    pub results_per_s: f64,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub age_ms_first_half: Percentiles,
    pub age_ms_second_half: Percentiles,
}

impl VideoReport {
    pub(super) fn print(&self) {
        println!(
            "video         {} streams × {:.2} fps offered  {:>8.2} results/s  dropped {}/{}  age p95 {:.0} ms → {:.0} ms (first → second half)",
            self.streams,
            self.offered_fps,
            self.results_per_s,
            self.frames_dropped,
            self.frames_sent,
            self.age_ms_first_half.p95,
            self.age_ms_second_half.p95
        );
    }
}

/// `streams` latest-only streams, each sending `fps` frames a second for `duration`.
pub(super) async fn run(
    client: &Client,
    workload: &Arc<Workload>,
    streams: usize,
    fps: f64,
    duration: Duration,
) -> anyhow::Result<VideoReport> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|s| {
            let (mut client, workload) = (client.clone(), Arc::clone(workload));
            tokio::spawn(async move {
                one_stream(&mut client, workload, s, fps, duration, started).await
            })
        })
        .collect();
    let (mut sent, mut dropped, mut results) = (0, 0, 0);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for task in tasks {
        let s = task.await??;
        sent += s.sent;
        dropped += s.dropped;
        results += s.ages.len() as u64;
        for (at, age) in s.ages {
            if at < duration / 2 {
                first.push(age);
            } else {
                second.push(age);
            }
        }
    }
    Ok(VideoReport {
        streams,
        offered_fps: fps,
        results_per_s: results as f64 / started.elapsed().as_secs_f64(),
        frames_sent: sent,
        frames_dropped: dropped,
        age_ms_first_half: percentiles(first),
        age_ms_second_half: percentiles(second),
    })
}

struct StreamTally {
    sent: u64,
    dropped: u64,
    /// (when the result arrived, since the start; its age in ms since its frame was sent)
    ages: Vec<(Duration, f64)>,
}

async fn one_stream(
    client: &mut Client,
    workload: Arc<Workload>,
    seed: usize,
    fps: f64,
    duration: Duration,
    started: Instant,
) -> anyhow::Result<StreamTally> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(workload.stream_config(pb::DeliveryMode::LatestOnly))
        .await?;
    let sent_at = Arc::new(std::sync::Mutex::new(HashMap::<u64, Instant>::new()));
    let mut responses = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let sender = {
        let sent_at = Arc::clone(&sent_at);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / fps.max(0.1)));
            let mut id = 0u64;
            while started.elapsed() < duration {
                ticker.tick().await;
                sent_at.lock().expect("lock").insert(id, Instant::now());
                let frame = pb::Frame {
                    frame_id: id,
                    timestamp_us: started.elapsed().as_micros() as i64,
                    image: Some(workload.image(seed + id as usize)),
                    ..Default::default()
                };
                if tx
                    .send(pb::StreamRequest {
                        msg: Some(pb::stream_request::Msg::Frame(frame)),
                    })
                    .await
                    .is_err()
                {
                    break;
                }
                id += 1;
            }
            id
        })
    };
    let mut tally = StreamTally {
        sent: 0,
        dropped: 0,
        ages: Vec::new(),
    };
    while let Some(response) = responses.message().await? {
        tally.dropped += response.skipped_frames;
        if let Some(at) = sent_at.lock().expect("lock").remove(&response.frame_id) {
            tally
                .ages
                .push((started.elapsed(), at.elapsed().as_secs_f64() * 1e3));
        }
    }
    tally.sent = sender.await?;
    Ok(tally)
}
