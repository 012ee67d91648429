//! From a stream's frame outcomes to the messages its client gets, in frame order: one message
//! per frame taken up, with the frames dropped since the previous message counted by reason.
//! Both delivery modes end here (`delivery`), so they report alike.

use std::sync::Arc;

use tonic::Status;

use super::{convert, delivery::Outbox, pb, stream::ActiveConfig};
use crate::infer::Timings;
use crate::model::scores::Score;
use crate::video::drops::{DropCounts, DropReason};

/// Which frame an outcome is about, and the config it arrived under.
pub(super) struct FrameMeta {
    pub(super) id: u64,
    pub(super) timestamp_us: i64,
    pub(super) config: Arc<ActiveConfig>,
}

/// What became of one frame.
pub(super) enum Outcome {
    Scored {
        meta: FrameMeta,
        scores: Vec<Score>,
        timings: Timings,
    },
    /// Could not be classified: answered with an in-band error, the stream goes on.
    Failed { meta: FrameMeta, error: Status },
    /// Got no message of its own.
    Dropped { meta: FrameMeta, reason: DropReason },
}

/// Writes a stream's messages, in the order outcomes are handed to it.
pub(super) struct Reporter {
    out: Outbox,
    drops: DropCounts,
    classified: u64,
    /// The last frame handed in, for the message that reports drops at the end.
    last: Option<FrameMeta>,
}

impl Reporter {
    pub(super) fn new(out: Outbox) -> Self {
        Self {
            out,
            drops: DropCounts::default(),
            classified: 0,
            last: None,
        }
    }

    /// Frames dropped before they became outcomes (superseded in the latest-only slot), to be
    /// reported with the next message.
    pub(super) fn dropped(&mut self, drops: DropCounts) {
        self.drops.merge(drops);
    }

    /// False when the message could not be delivered (the client went away or stopped reading).
    pub(super) async fn take(&mut self, outcome: Outcome) -> bool {
        let (meta, response) = match outcome {
            Outcome::Dropped { meta, reason } => {
                self.drops.add(reason);
                self.last = Some(meta);
                return true;
            }
            Outcome::Scored {
                meta,
                scores,
                timings,
            } => {
                self.classified += 1;
                let mut response = self.message(&meta);
                response.scores = convert::scores(scores);
                response.timings = Some(convert::timings(timings));
                (meta, response)
            }
            Outcome::Failed { meta, error } => {
                let mut response = self.message(&meta);
                response.error = Some(pb::FrameError {
                    code: error.code() as i32,
                    message: error.message().to_string(),
                });
                (meta, response)
            }
        };
        self.last = Some(meta);
        self.out.send(response).await
    }

    /// At the end of the stream: frames dropped since the last message are reported in one
    /// more message (the last frame's id, `heartbeat` set), so that every frame is accounted for.
    pub(super) async fn finish(mut self) {
        let Some(meta) = self.last.take() else { return };
        if self.drops.total() == 0 {
            return;
        }
        let mut response = self.message(&meta);
        response.heartbeat = true;
        self.out.send(response).await;
    }

    /// A message about `meta`'s frame, carrying (and resetting) the counts since the last one.
    fn message(&mut self, meta: &FrameMeta) -> pb::StreamResponse {
        let dropped = self.drops.take();
        pb::StreamResponse {
            frame_id: meta.id,
            timestamp_us: meta.timestamp_us,
            config_generation: meta.config.generation,
            skipped_frames: dropped.total(),
            dropped: Some(convert::drops(dropped)),
            classified_frames: std::mem::take(&mut self.classified),
            ..Default::default()
        }
    }
}
