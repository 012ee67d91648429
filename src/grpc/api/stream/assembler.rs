//! Frames off the wire, whole or in chunks, into [`Arrival`]s: ready to classify, or skipped
//! for the config's `max_fps` before anything is decoded.

use std::{sync::Arc, time::Instant};

use ::metrics::counter;
use tonic::Status;

use super::super::{
    chunks::{Budget, Reassembly},
    convert, pb,
};
use super::frame::{ActiveConfig, FrameMeta, ReadyFrame};
use super::settings;
use super::PROTOCOL;
use crate::infer::ImageInput;
use crate::metrics;
use crate::model::image::Region;
use crate::stream::{drops::DropReason, rate::RateGate};
use crate::telemetry::FrameSampler;

/// A frame's own regions, when it lists any (they replace the config's for this frame; their
/// shape is checked with the frame, so that a bad list costs only that frame).
fn frame_regions(regions: &[pb::Region]) -> Option<Vec<Region>> {
    (!regions.is_empty()).then(|| regions.iter().map(settings::region).collect())
}

/// A frame complete on the wire: to classify, or skipped for its rate.
pub(super) enum Arrival {
    Ready(ReadyFrame),
    Skipped(FrameMeta),
}

/// Turns frames (whole, or in chunks) into [`Arrival`]s, one chunked frame at a time. The
/// rate limit is applied here, at a frame's first message: a frame over the rate is never
/// decoded, and the chunks of one are read and let go, never held.
pub(super) struct Assembler {
    max_bytes: usize,
    budget: Arc<Budget>,
    rate: RateGate,
    partial: Option<Partial>,
    /// Which frames get spans of their own (`--trace-frame-ratio`).
    frames: FrameSampler,
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
    pub(super) fn new(max_bytes: usize, budget: Arc<Budget>, config: &ActiveConfig) -> Self {
        Self {
            max_bytes,
            budget,
            rate: RateGate::new(config.settings.policy.max_fps),
            partial: None,
            frames: FrameSampler::new(),
        }
    }

    /// A new config starts its own rate count.
    pub(super) fn reconfigure(&mut self, config: &ActiveConfig) {
        self.rate = RateGate::new(config.settings.policy.max_fps);
    }

    /// The protocol error for a stream that ends in the middle of a chunked frame.
    pub(super) fn incomplete(&self) -> Option<Status> {
        self.partial.as_ref().map(|p| {
            Status::invalid_argument(format!(
                "{PROTOCOL} protocol: the stream ended before frame {} was complete (send its last chunk with last=true)",
                p.id
            ))
        })
    }

    pub(super) fn push(
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
                    span: self.frames.next("frame", id),
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
