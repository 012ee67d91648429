//! Why a frame got no message of its own, and how many did since the last message.

use ::metrics::counter;

use crate::metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Replaced by a newer frame while it waited (latest-only delivery).
    Superseded,
    /// Over the stream's `max_fps`, judged by the client's timestamps.
    Rate,
    /// Waited longer than the stream's `max_age_ms` before inference.
    Stale,
    /// Could not be classified (counted as a drop only when the stream sends no in-band errors).
    Error,
}

impl DropReason {
    /// The `reason` label of `siglip_stream_frames_dropped_total`.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Superseded => "superseded",
            DropReason::Rate => "rate",
            DropReason::Stale => "stale",
            DropReason::Error => "error",
        }
    }

    /// Counts one drop in the metrics, where it happens.
    pub fn record(self) {
        counter!(metrics::FRAMES_DROPPED, "reason" => self.label()).increment(1);
    }
}

/// Frames dropped since the previous message, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    pub superseded: u64,
    pub rate: u64,
    pub stale: u64,
    pub error: u64,
}

impl DropCounts {
    pub fn add(&mut self, reason: DropReason) {
        *self.slot(reason) += 1;
    }

    pub fn merge(&mut self, other: DropCounts) {
        self.superseded += other.superseded;
        self.rate += other.rate;
        self.stale += other.stale;
        self.error += other.error;
    }

    pub fn total(&self) -> u64 {
        self.superseded + self.rate + self.stale + self.error
    }

    /// The counts so far, leaving zero: each message reports the drops since the previous one.
    pub fn take(&mut self) -> DropCounts {
        std::mem::take(self)
    }

    fn slot(&mut self, reason: DropReason) -> &mut u64 {
        match reason {
            DropReason::Superseded => &mut self.superseded,
            DropReason::Rate => &mut self.rate,
            DropReason::Stale => &mut self.stale,
            DropReason::Error => &mut self.error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason_and_take_leaves_zero() {
        let mut counts = DropCounts::default();
        for reason in [DropReason::Rate, DropReason::Rate, DropReason::Stale] {
            counts.add(reason);
        }
        counts.merge(DropCounts {
            superseded: 2,
            error: 1,
            ..DropCounts::default()
        });
        assert_eq!(counts.total(), 6);
        let taken = counts.take();
        assert_eq!(
            taken,
            DropCounts {
                superseded: 2,
                rate: 2,
                stale: 1,
                error: 1
            }
        );
        assert_eq!(counts.total(), 0);
    }

    #[test]
    fn labels_match_the_registered_metric_reasons() {
        let labels = [
            DropReason::Superseded,
            DropReason::Rate,
            DropReason::Stale,
            DropReason::Error,
        ]
        .map(DropReason::label);
        assert_eq!(labels, crate::metrics::FRAME_DROP_REASONS);
    }
}
