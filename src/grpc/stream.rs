//! The bidirectional `Stream` call, for video: a configuration first (labels, delivery mode, and
//! optionally frame policy, smoothing, events and regions: `stream_config`), then frames.
//!
//! The label set is embedded once per config, and a new config replaces the whole setup; frames
//! already read keep the config they arrived under (a chunked frame: the one in force at its last
//! chunk; its regions and its `max_fps` decision come from its first). `max_fps` is applied here,
//! as frames arrive, before any decoding. Two delivery modes (`delivery`):
//! - every frame: frames are classified in a bounded pipeline and answered in order; when the
//!   pipeline is full the server stops reading, so the client feels backpressure;
//! - latest only: one slot holds the newest unclassified frame; a frame that arrives while one
//!   waits replaces it, and the next message counts it as superseded — live video gets the
//!   freshest answer instead of a growing lag.
//!
//! What each frame's outcome becomes on the wire (drop counts, smoothing, events, events-only) is
//! the stream's `report::Reporter`'s.
//!
//! A bad frame gets an in-band error on its result; a protocol violation ends the stream with
//! INVALID_ARGUMENT. The stream ends with UNAVAILABLE ("reconnect") at its maximum lifetime or
//! at shutdown, after the frames already read are answered. Every wait has an end: the config
//! must come within `--first-message-timeout-seconds`, each later message within
//! `--idle-timeout-seconds`, and a client that stops reading its results loses the stream
//! (`delivery::Outbox`); each ends it with DEADLINE_EXCEEDED.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ::metrics::{counter, gauge};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Status, Streaming};

use super::{
    chunks::{Budget, Reassembly},
    convert,
    delivery::{Outbox, Output, ReadyFrame, Sink},
    observe::{client_gone, record, record_ok},
    pb,
    report::FrameMeta,
    state::State,
    status::remap_incoming,
    stream_config::{self, Settings},
};
use crate::batch::Flow;
use crate::infer::{ImageInput, Infer, Labels};
use crate::metrics;
use crate::model::image::Region;
use crate::video::{drops::DropReason, rate::RateGate};

const PROTOCOL: &str = "Stream";

/// Starts the stream's tasks; the returned stream yields its responses, then the status it
/// ended with. Everything the stream holds is freed when it ends or the client goes away.
pub fn run(
    infer: Arc<Infer>,
    state: Arc<State>,
    input: Streaming<pb::StreamRequest>,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Output> {
    let limits = &state.limits;
    let pipeline = limits.stream_pipeline.max(1);
    let (tx, rx) = mpsc::channel(pipeline);
    let lifetime =
        (limits.max_stream_seconds > 0).then(|| Duration::from_secs(limits.max_stream_seconds));
    let ends_at = lifetime.map(|d| tokio::time::Instant::now() + d);
    let out = Outbox::new(tx, limits.idle_timeout, ends_at);
    // The final status comes after the results, but needs no room among them: a client that
    // does not read must not keep the stream's task (and slot) waiting to tell it so.
    let (last, last_rx) = oneshot::channel::<Status>();
    tokio::spawn(async move {
        let started = Instant::now();
        gauge!(metrics::ACTIVE_STREAMS).increment(1.0);
        let result = drive(infer, &state, input, out.clone(), ends_at).await;
        gauge!(metrics::ACTIVE_STREAMS).decrement(1.0);
        match &result {
            Ok(()) => record_ok("Stream", started),
            Err(status) => record("Stream", status, started),
        }
        // The slot is freed before the client can hear that the stream is over (the end of the
        // response needs both `last` and `out` gone), so that a client that reconnects on that
        // news finds it free.
        drop(permit);
        if let Err(status) = result {
            let _ = last.send(status);
        }
        drop(out);
    });
    let last = futures_util::StreamExt::filter_map(futures_util::stream::once(last_rx), |r| {
        std::future::ready(r.ok().map(Err))
    });
    futures_util::StreamExt::chain(ReceiverStream::new(rx), last)
}

async fn drive(
    infer: Arc<Infer>,
    state: &State,
    mut input: Streaming<pb::StreamRequest>,
    out: Outbox,
    ends_at: Option<tokio::time::Instant>,
) -> Result<(), Status> {
    let limits = &state.limits;
    let waits = state.waits();
    let mut shutdown = state.shutdown_signal();
    let first = tokio::select! {
        first = waits.first(PROTOCOL, next_message(&mut input, limits.max_message_bytes)) => first?,
        _ = shutdown.wait_for(|down| *down) => return Err(shutting_down()),
    };
    let first = match first {
        Some(pb::stream_request::Msg::Config(c)) => c,
        Some(pb::stream_request::Msg::Frame(_)) => {
            return Err(Status::invalid_argument(
                "Stream protocol: the first message must be a StreamConfig (labels and mode), got a frame",
            ))
        }
        None => return Ok(()),
    };
    let mode = match pb::DeliveryMode::try_from(first.mode) {
        Ok(pb::DeliveryMode::LatestOnly) => pb::DeliveryMode::LatestOnly,
        Ok(_) => pb::DeliveryMode::EveryFrame,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown delivery mode {}",
                first.mode
            )))
        }
    };
    let mut active = Arc::new(configure(&infer, first, 0).await?);
    let flow = Flow::new();
    let sink = match mode {
        pb::DeliveryMode::LatestOnly => Sink::latest(Arc::clone(&infer), flow, out.clone()),
        _ => Sink::ordered(
            Arc::clone(&infer),
            flow,
            out.clone(),
            limits.stream_pipeline.max(1),
        ),
    };
    let mut assembler = Assembler::new(
        infer.limits().image.max_bytes,
        Arc::clone(&state.reassembly),
        &active,
    );

    let ending = loop {
        let msg = tokio::select! {
            msg = waits.next(PROTOCOL, next_message(&mut input, limits.max_message_bytes)) => msg,
            _ = sleep_until(ends_at) => break Some(Status::unavailable(format!(
                "stream reached its maximum lifetime of {}s (--max-stream-seconds): reconnect to continue",
                limits.max_stream_seconds
            ))),
            _ = shutdown.wait_for(|down| *down) => break Some(shutting_down()),
            stalled = out.stalled() => break Some(stalled),
            _ = out.closed() => break Some(client_gone()),
        };
        match msg {
            Err(status) => break Some(status),
            Ok(None) => break assembler.incomplete(),
            Ok(Some(pb::stream_request::Msg::Config(config))) => {
                if config.mode != 0 && config.mode != mode as i32 {
                    break Some(Status::invalid_argument(
                        "Stream protocol: the delivery mode cannot change mid-stream; open a new stream",
                    ));
                }
                match configure(&infer, config, active.generation + 1).await {
                    Ok(next) => {
                        active = Arc::new(next);
                        assembler.reconfigure(&active);
                    }
                    Err(status) => break Some(status),
                }
            }
            Ok(Some(pb::stream_request::Msg::Frame(frame))) => {
                let delivered = match assembler.push(frame, &active) {
                    Ok(Some(Arrival::Ready(ready))) => sink.submit(ready).await,
                    Ok(Some(Arrival::Skipped(meta))) => sink.skip(meta, DropReason::Rate).await,
                    Ok(None) => true,
                    Err(status) => break Some(status),
                };
                if !delivered {
                    break Some(out.stall().unwrap_or_else(client_gone));
                }
            }
        }
    };
    // Answer what was read before ending (sends still have an end), then close with the reason.
    sink.finish().await;
    match ending {
        Some(status) => Err(status),
        None => Ok(()),
    }
}

fn shutting_down() -> Status {
    Status::unavailable("server is shutting down: reconnect to continue on another replica")
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_message(
    input: &mut Streaming<pb::StreamRequest>,
    max_message_bytes: usize,
) -> Result<Option<pb::stream_request::Msg>, Status> {
    match input.next().await {
        None => Ok(None),
        Some(Err(status)) => Err(remap_incoming(status, max_message_bytes)),
        Some(Ok(req)) => req
            .msg
            .map(Some)
            .ok_or_else(|| Status::invalid_argument("empty StreamRequest: set config or frame")),
    }
}

/// What frames are classified against: the config they arrived under, checked and embedded.
pub(super) struct ActiveConfig {
    pub(super) labels: Labels,
    pub(super) settings: Settings,
    /// Counts the configs of the stream, from 0.
    pub(super) generation: u32,
}

/// Checks a configuration and embeds its labels; a bad config ends the stream (it is the
/// client's setup, not one frame, that is wrong).
async fn configure(
    infer: &Infer,
    config: pb::StreamConfig,
    generation: u32,
) -> Result<ActiveConfig, Status> {
    let settings = stream_config::settings(&config, infer.limits().max_regions)?;
    let (labels, _) = infer.labels(config.texts, None).await?;
    Ok(ActiveConfig {
        labels,
        settings,
        generation,
    })
}

/// A frame's own regions, when it lists any (they replace the config's for this frame; their
/// shape is checked with the frame, so that a bad list costs only that frame).
fn frame_regions(regions: &[pb::Region]) -> Option<Vec<Region>> {
    (!regions.is_empty()).then(|| regions.iter().map(stream_config::region).collect())
}

/// A frame complete on the wire: to classify, or skipped for its rate.
enum Arrival {
    Ready(ReadyFrame),
    Skipped(FrameMeta),
}

/// Turns frames (whole, or in chunks) into [`Arrival`]s, one chunked frame at a time. The
/// rate limit is applied here, at a frame's first message: a frame over the rate is never
/// decoded, and the chunks of one are read and let go, never held.
struct Assembler {
    max_bytes: usize,
    budget: Arc<Budget>,
    rate: RateGate,
    partial: Option<Partial>,
}

struct Partial {
    id: u64,
    timestamp_us: i64,
    /// From the frame's first chunk.
    regions: Option<Vec<Region>>,
    /// `None` for a frame skipped for its rate.
    image: Option<Reassembly>,
}

impl Assembler {
    fn new(max_bytes: usize, budget: Arc<Budget>, config: &ActiveConfig) -> Self {
        Self {
            max_bytes,
            budget,
            rate: RateGate::new(config.settings.policy.max_fps),
            partial: None,
        }
    }

    /// A new config starts its own rate count.
    fn reconfigure(&mut self, config: &ActiveConfig) {
        self.rate = RateGate::new(config.settings.policy.max_fps);
    }

    /// The protocol error for a stream that ends in the middle of a chunked frame.
    fn incomplete(&self) -> Option<Status> {
        self.partial.as_ref().map(|p| {
            Status::invalid_argument(format!(
                "{PROTOCOL} protocol: the stream ended before frame {} was complete (send its last chunk with last=true)",
                p.id
            ))
        })
    }

    fn push(
        &mut self,
        frame: pb::Frame,
        config: &Arc<ActiveConfig>,
    ) -> Result<Option<Arrival>, Status> {
        let arrival = |id, timestamp_us, regions, image: Option<Result<ImageInput, _>>| {
            counter!(metrics::FRAMES_RECEIVED).increment(1);
            let meta = FrameMeta {
                id,
                timestamp_us,
                config: Arc::clone(config),
            };
            match image {
                Some(image) => Arrival::Ready(ReadyFrame {
                    received: Instant::now(),
                    meta,
                    regions,
                    image,
                }),
                None => {
                    DropReason::Rate.record();
                    Arrival::Skipped(meta)
                }
            }
        };
        if frame.image.is_some() {
            if !frame.chunk.is_empty() {
                return Err(Status::invalid_argument(format!(
                    "{PROTOCOL} protocol: frame {} carries both image and chunk; send one or the other",
                    frame.frame_id
                )));
            }
            if let Some(partial) = &self.partial {
                return Err(Status::invalid_argument(format!(
                    "{PROTOCOL} protocol: frame {} is whole but frame {} is still incomplete (send it with last=true first)",
                    frame.frame_id, partial.id
                )));
            }
            let image = self
                .rate
                .admit(frame.timestamp_us)
                .then(|| convert::image(frame.image));
            let regions = frame_regions(&frame.regions);
            return Ok(Some(arrival(
                frame.frame_id,
                frame.timestamp_us,
                regions,
                image,
            )));
        }
        if self.partial.is_none() && frame.chunk.is_empty() && !frame.last {
            return Err(Status::invalid_argument(format!(
                "{PROTOCOL} protocol: frame {} has neither an image nor a chunk",
                frame.frame_id
            )));
        }
        let (max_bytes, budget, rate) = (self.max_bytes, &self.budget, &mut self.rate);
        let partial = self.partial.get_or_insert_with(|| Partial {
            id: frame.frame_id,
            timestamp_us: frame.timestamp_us,
            regions: frame_regions(&frame.regions),
            image: rate
                .admit(frame.timestamp_us)
                .then(|| Reassembly::open(max_bytes, Arc::clone(budget))),
        });
        if partial.id != frame.frame_id {
            return Err(Status::invalid_argument(format!(
                "{PROTOCOL} protocol: a chunk of frame {} arrived before frame {} was complete (last=true)",
                frame.frame_id, partial.id
            )));
        }
        // A frame over the byte limit is read to its end and answered with an in-band error.
        if let Some(image) = &mut partial.image {
            image
                .push(&frame.chunk)
                .map_err(|e| Status::from(e.into_error(PROTOCOL)))?;
        }
        if !frame.last {
            return Ok(None);
        }
        let done = self.partial.take().expect("partial frame present");
        let image = done.image.map(|image| {
            image
                .finish()
                .map(ImageInput::Encoded)
                .map_err(|e| e.into_error(PROTOCOL))
        });
        Ok(Some(arrival(
            done.id,
            done.timestamp_us,
            done.regions,
            image,
        )))
    }
}
