//! One frame of a stream: the config it arrived under, the frame ready to classify, what became
//! of it ([`Outcome`]), and how a ready frame is classified.

use std::{sync::Arc, time::Instant};

use ::metrics::{counter, histogram};
use tonic::Status;

use super::super::{convert, pb};
use crate::error::Error;
use crate::infer::{Flow, ImageInput, Labels, Timings};
use crate::metrics;
use crate::model::image::{Preprocess, Region};
use crate::model::scores::Score;
use crate::repository::Served;
use crate::stream::{drops::DropReason, Settings};

/// What frames are classified against: the config they arrived under, checked and embedded.
pub(super) struct ActiveConfig {
    /// The model version that embedded the labels: it classifies the config's frames.
    pub(super) served: Arc<Served>,
    pub(super) labels: Labels,
    pub(super) settings: Settings,
    /// How its frames are preprocessed (a NaFlex model's patch budget chosen).
    pub(super) preprocess: Preprocess,
    /// Counts the configs of the stream, from 0.
    pub(super) generation: u32,
}

/// Which frame an outcome is about, and the config it arrived under.
#[derive(Clone)]
pub(super) struct FrameMeta {
    pub(super) id: u64,
    pub(super) timestamp_us: i64,
    pub(super) config: Arc<ActiveConfig>,
}

/// One classified area of a frame: the whole frame, or one of its regions.
pub(super) struct AreaScores {
    /// The region's index in the frame's list, and the region; `None` for the whole frame.
    pub(super) region: Option<(u32, pb::Region)>,
    /// Every label, in label order.
    pub(super) scores: Vec<Score>,
}

/// What became of one frame.
pub(super) enum Outcome {
    Scored {
        meta: FrameMeta,
        areas: Vec<AreaScores>,
        timings: Timings,
    },
    /// Could not be classified: answered with an in-band error (in events-only mode, counted
    /// as a drop instead); the stream goes on.
    Failed { meta: FrameMeta, error: Status },
    /// Got no message of its own.
    Dropped { meta: FrameMeta, reason: DropReason },
}

impl Outcome {
    pub(super) fn meta(&self) -> &FrameMeta {
        match self {
            Outcome::Scored { meta, .. }
            | Outcome::Failed { meta, .. }
            | Outcome::Dropped { meta, .. } => meta,
        }
    }
}

/// A whole frame, ready to classify (or already known to be bad).
pub(super) struct ReadyFrame {
    /// When the frame was complete: its age (`max_age_ms`) and staleness run from here.
    pub(super) received: Instant,
    /// The frame's span, when it is one of a traced stream's sampled frames.
    pub(super) span: tracing::Span,
    pub(super) meta: FrameMeta,
    /// The frame's own regions, replacing the config's for this frame.
    pub(super) regions: Option<Vec<Region>>,
    pub(super) image: Result<ImageInput, Error>,
}

/// Classifies a ready frame as part of the stream's `flow`: what became of it.
/// The frame's config names the model that classifies it.
pub(super) async fn classify(frame: ReadyFrame, flow: Flow) -> Outcome {
    let span = frame.span.clone();
    tracing::Instrument::instrument(classify_in_span(frame, flow), span).await
}

async fn classify_in_span(frame: ReadyFrame, flow: Flow) -> Outcome {
    let ReadyFrame {
        received,
        span: _,
        meta,
        regions,
        image,
    } = frame;
    let config = Arc::clone(&meta.config);
    let stale_at = config.settings.policy.max_age.map(|age| received + age);
    if stale_at.is_some_and(|at| Instant::now() >= at) {
        DropReason::Stale.record();
        return Outcome::Dropped {
            meta,
            reason: DropReason::Stale,
        };
    }
    let regions = regions.as_deref().unwrap_or(&config.settings.regions);
    let result = match image {
        Ok(image) => {
            config
                .served
                .infer
                .classify_frame(
                    image,
                    &config.preprocess,
                    regions,
                    &config.labels,
                    flow,
                    stale_at,
                )
                .await
        }
        Err(e) => Err(e),
    };
    if let Err(Error::Stale(_)) = result {
        DropReason::Stale.record();
        return Outcome::Dropped {
            meta,
            reason: DropReason::Stale,
        };
    }
    histogram!(metrics::STALENESS).record(received.elapsed());
    match result {
        Ok(scores) => {
            counter!(metrics::FRAMES_CLASSIFIED).increment(1);
            let areas = if regions.is_empty() {
                scores
                    .areas
                    .into_iter()
                    .map(|scores| AreaScores {
                        region: None,
                        scores,
                    })
                    .collect()
            } else {
                (0..)
                    .zip(regions)
                    .zip(scores.areas)
                    .map(|((index, r), scores)| AreaScores {
                        region: Some((index, convert::region(*r))),
                        scores,
                    })
                    .collect()
            };
            Outcome::Scored {
                meta,
                areas,
                timings: scores.timings,
            }
        }
        Err(e) => Outcome::Failed {
            meta,
            error: Status::from(e),
        },
    }
}
