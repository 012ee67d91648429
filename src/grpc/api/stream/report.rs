//! From a stream's frame outcomes to the messages its client gets, in frame order. Both
//! delivery modes end here, so they report alike:
//! - the frames dropped since the previous message, counted by reason;
//! - smoothing and enter/leave events over the frames classified (`stream::tracker`);
//! - in events-only mode, only the messages worth sending: events, and heartbeats by the
//!   client's clock (`stream::heartbeat`).

use std::sync::Arc;

use super::super::{convert, pb};
use super::frame::{ActiveConfig, AreaScores, FrameMeta, Outcome};
use super::outbox::Outbox;
use crate::infer::Timings;
use crate::model::scores::{select, Score, ScoreFilter};
use crate::stream::{
    drops::{DropCounts, DropReason},
    heartbeat::Heartbeat,
    hysteresis::EventKind,
    tracker::Tracker,
};

/// Writes a stream's messages, in the order outcomes are handed to it.
pub(super) struct Reporter {
    out: Outbox<pb::StreamResponse>,
    drops: DropCounts,
    classified: u64,
    /// The config the tracker follows, and the smoothing and event state.
    tracked: Option<(Arc<ActiveConfig>, Tracker)>,
    /// Events-only mode's clock (kept across configs that stay events-only).
    heartbeat: Option<Heartbeat>,
    /// The last frame handed in, for the message that reports drops at the end.
    last: Option<FrameMeta>,
}

impl Reporter {
    pub(super) fn new(out: Outbox<pb::StreamResponse>) -> Self {
        Self {
            out,
            drops: DropCounts::default(),
            classified: 0,
            tracked: None,
            heartbeat: None,
            last: None,
        }
    }

    /// Frames dropped before they became outcomes (superseded in the latest-only slot), to be
    /// reported with the next message.
    pub(super) fn dropped(&mut self, drops: DropCounts) {
        self.drops.merge(drops);
    }

    /// False when a message could not be delivered (the client went away or stopped reading).
    pub(super) async fn take(&mut self, outcome: Outcome) -> bool {
        self.follow(&outcome.meta().config);
        let response = match outcome {
            Outcome::Dropped { meta, reason } => {
                self.drops.add(reason);
                // A frame the server took up and found stale is a sign of life.
                let beat = reason == DropReason::Stale && self.heartbeat_due(&meta);
                let response = beat.then(|| self.heartbeat(&meta));
                self.last = Some(meta);
                response
            }
            Outcome::Failed { meta, .. } if self.heartbeat.is_some() => {
                DropReason::Error.record();
                self.drops.add(DropReason::Error);
                let response = self.heartbeat_due(&meta).then(|| self.heartbeat(&meta));
                self.last = Some(meta);
                response
            }
            Outcome::Failed { meta, error } => {
                DropReason::Error.record();
                let mut response = self.message(&meta);
                response.error = Some(pb::FrameError {
                    code: error.code() as i32,
                    message: error.message().to_string(),
                });
                self.last = Some(meta);
                Some(response)
            }
            Outcome::Scored {
                meta,
                areas,
                timings,
            } => {
                self.classified += 1;
                let response = self.scored(&meta, areas, timings);
                self.last = Some(meta);
                response
            }
        };
        let Some(response) = response else {
            return true;
        };
        if let Some(clock) = &mut self.heartbeat {
            clock.sent(response.timestamp_us);
        }
        self.out.send(response).await
    }

    /// At the end of the stream: frames dropped since the last message (in events-only mode,
    /// also frames classified) are reported in one more message (the last frame's id,
    /// `heartbeat` set), so that every frame is accounted for.
    pub(super) async fn finish(mut self) {
        let Some(meta) = self.last.take() else { return };
        let classified = self.heartbeat.is_some() && self.classified > 0;
        if self.drops.total() == 0 && !classified {
            return;
        }
        let response = self.heartbeat(&meta);
        self.out.send(response).await;
    }

    /// Outcomes come in frame order, so the first one under a new config marks the switch: the
    /// tracker keeps what the new config keeps (`Tracker::reconfigure`).
    fn follow(&mut self, config: &Arc<ActiveConfig>) {
        let tracking = config.settings.tracking.clone();
        let texts = &config.labels.texts;
        match &mut self.tracked {
            Some((current, _)) if current.generation == config.generation => return,
            Some((current, tracker)) => {
                let regions_changed = current.settings.regions != config.settings.regions;
                tracker.reconfigure(tracking, texts, regions_changed);
                *current = Arc::clone(config);
            }
            None => self.tracked = Some((Arc::clone(config), Tracker::new(tracking, texts))),
        }
        self.heartbeat = match (config.settings.events_only, self.heartbeat.take()) {
            (Some(ms), Some(mut clock)) => {
                clock.retime(ms);
                Some(clock)
            }
            (Some(ms), None) => Some(Heartbeat::new(ms)),
            (None, _) => None,
        };
    }

    fn heartbeat_due(&self, meta: &FrameMeta) -> bool {
        self.heartbeat
            .as_ref()
            .is_some_and(|clock| clock.due(meta.timestamp_us))
    }

    /// The message for a classified frame: its scores (per region, with regions), smoothed and
    /// selected, and the events it completed; in events-only mode, only when an event fired or
    /// a heartbeat is due.
    fn scored(
        &mut self,
        meta: &FrameMeta,
        areas: Vec<AreaScores>,
        timings: Timings,
    ) -> Option<pb::StreamResponse> {
        let (config, tracker) = self.tracked.as_mut().expect("follow() ran first");
        let smoothing = config.settings.tracking.smoothing.is_some();
        let filter = config.settings.filter;
        let mut scores = vec![];
        let mut regions = vec![];
        let mut events = vec![];
        for area in areas {
            let key = area.region.as_ref().map(|(index, _)| *index);
            let probabilities: Vec<f32> = area.scores.iter().map(|s| s.probability).collect();
            let observed = tracker.observe(key, &probabilities);
            events.extend(
                observed
                    .events
                    .iter()
                    .map(|&(label, kind, value)| pb::LabelEvent {
                        label: area.scores[label].label.clone(),
                        index: label as u32,
                        kind: match kind {
                            EventKind::Enter => pb::EventKind::Enter,
                            EventKind::Leave => pb::EventKind::Leave,
                        } as i32,
                        frame_id: meta.id,
                        timestamp_us: meta.timestamp_us,
                        probability: value,
                        region: key,
                    }),
            );
            let smoothed = smoothing.then_some(observed.values);
            let selected = selection(area.scores, smoothed, filter);
            match area.region {
                None => scores = selected,
                Some((index, region)) => regions.push(pb::RegionScores {
                    index,
                    region: Some(region),
                    scores: selected,
                }),
            }
        }
        let quiet = events.is_empty();
        if self.heartbeat.is_some() && quiet && !self.heartbeat_due(meta) {
            return None;
        }
        let mut response = self.message(meta);
        response.scores = scores;
        response.regions = regions;
        response.events = events;
        response.timings = Some(convert::timings(timings));
        response.heartbeat = self.heartbeat.is_some() && quiet;
        Some(response)
    }

    /// A message that carries no scores: a heartbeat, or the report of drops at the end.
    fn heartbeat(&mut self, meta: &FrameMeta) -> pb::StreamResponse {
        let mut response = self.message(meta);
        response.heartbeat = true;
        response
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

/// The scores a client gets: filtered and ordered by the smoothed value when the stream smooths
/// (and carrying it), by the raw one otherwise, as Classify does.
fn selection(
    scores: Vec<Score>,
    smoothed: Option<Vec<f32>>,
    filter: ScoreFilter,
) -> Vec<pb::LabelScore> {
    let Some(smoothed) = smoothed else {
        return convert::scores(select(scores, filter));
    };
    let mut paired: Vec<(Score, f32)> = scores
        .into_iter()
        .zip(smoothed)
        .filter(|(_, v)| *v >= filter.threshold)
        .collect();
    paired.sort_by(|a, b| b.1.total_cmp(&a.1));
    if filter.top_k > 0 {
        paired.truncate(filter.top_k);
    }
    paired
        .into_iter()
        .map(|(score, v)| {
            let mut out = convert::score(score);
            out.smoothed_probability = Some(v);
            out
        })
        .collect()
}
