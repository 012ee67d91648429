//! `max_fps`: which frames to take, judged by the client's timestamps alone.
//!
//! Client time, not arrival time: a replay sent faster than real time, or frames bunched by the
//! network, are thinned exactly as the camera produced them, and the result is reproducible.

/// A schedule of due times `1/max_fps` apart. A frame at or after the due time (less 1% of the
/// interval, so that timestamps rounded to microseconds lose nothing at exactly the rate) is
/// taken, and the next frame is due one interval after the due time it met. Keeping the schedule
/// (rather than counting from the frame) carries a frame's lateness over, so a 15 fps source
/// under `max_fps` 10 keeps 10 frames a second (two of every three), not every other one. A
/// frame a whole interval late (after a pause) restarts the schedule from itself: no burst, and
/// two frames with one timestamp are never both taken.
#[derive(Debug, Clone)]
pub struct RateGate {
    /// Microseconds between frames; 0 takes every frame.
    interval_us: f64,
    /// When the next frame is due, and the last frame taken.
    schedule: Option<(f64, i64)>,
    /// The previous frame's timestamp, taken or not.
    previous_us: Option<i64>,
}

/// The part of an interval a frame may come early by and still be taken.
const SLACK: f64 = 0.01;

impl RateGate {
    /// `max_fps` 0 takes every frame.
    pub fn new(max_fps: f32) -> Self {
        Self {
            interval_us: if max_fps > 0.0 {
                1e6 / f64::from(max_fps)
            } else {
                0.0
            },
            schedule: None,
            previous_us: None,
        }
    }

    /// Whether the frame at `timestamp_us` is taken. A timestamp below the previous frame's (a
    /// new clip, a seek) starts the schedule afresh.
    pub fn admit(&mut self, timestamp_us: i64) -> bool {
        if self.interval_us == 0.0 {
            return true;
        }
        let backwards = self.previous_us.is_some_and(|p| timestamp_us < p);
        self.previous_us = Some(timestamp_us);
        let ts = timestamp_us as f64;
        let due = match self.schedule {
            Some((due, taken)) if !backwards => {
                if timestamp_us == taken || ts < due - SLACK * self.interval_us {
                    return false;
                }
                // A frame late by less than an interval keeps the schedule (the lateness carries
                // over); one later than that, after a pause, starts it from itself.
                if ts - due < self.interval_us {
                    due
                } else {
                    ts
                }
            }
            // The first frame, or a timestamp that went backwards.
            _ => ts,
        };
        self.schedule = Some((due + self.interval_us, timestamp_us));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(gate: &mut RateGate, timestamps: impl IntoIterator<Item = i64>) -> Vec<i64> {
        timestamps
            .into_iter()
            .filter(|&ts| gate.admit(ts))
            .collect()
    }

    #[test]
    fn a_100fps_source_at_25fps_keeps_every_fourth_frame() {
        let mut gate = RateGate::new(25.0);
        let kept = taken(&mut gate, (0..29).map(|k| k * 10_000));
        assert_eq!(
            kept,
            (0..29).step_by(4).map(|k| k * 10_000).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_source_at_the_rate_loses_nothing_despite_rounding() {
        // 30 fps in whole microseconds: 33_333 µs earns 0.99999 of a frame.
        let mut gate = RateGate::new(30.0);
        assert_eq!(taken(&mut gate, (0..300).map(|k| k * 33_333)).len(), 300);
    }

    #[test]
    fn zero_means_no_limit_and_equal_timestamps_are_over_any_rate() {
        assert_eq!(taken(&mut RateGate::new(0.0), [0, 0, 0]).len(), 3);
        assert_eq!(taken(&mut RateGate::new(1000.0), [5, 5, 5]), vec![5]);
    }

    #[test]
    fn a_15fps_source_at_10fps_keeps_two_frames_of_three() {
        let mut gate = RateGate::new(10.0);
        let kept = taken(&mut gate, (0..30).map(|k| k * 1_000_000 / 15));
        assert_eq!(kept.len(), 20, "{kept:?}");
    }

    #[test]
    fn a_backwards_timestamp_starts_afresh() {
        let mut gate = RateGate::new(1.0);
        assert_eq!(
            taken(&mut gate, [1_000_000, 1_100_000, 0, 100_000]),
            vec![1_000_000, 0]
        );
    }

    #[test]
    fn backwards_is_judged_from_the_previous_frame_taken_or_not() {
        // 1 fps: 1.0 s taken, 1.5 s skipped, then a seek back to 1.2 s starts afresh.
        let mut gate = RateGate::new(1.0);
        assert_eq!(
            taken(&mut gate, [1_000_000, 1_500_000, 1_200_000, 1_300_000]),
            vec![1_000_000, 1_200_000]
        );
    }

    #[test]
    fn a_pause_earns_no_burst() {
        let mut gate = RateGate::new(10.0);
        // After a long pause, frames 1 µs apart: one is taken, then the schedule holds again.
        let kept = taken(
            &mut gate,
            [0, 10_000_000, 10_000_001, 10_000_002, 10_000_003],
        );
        assert_eq!(kept, vec![0, 10_000_000]);
        assert_eq!(
            taken(&mut gate, [10_000_004, 10_050_000, 10_100_000]),
            vec![10_100_000]
        );
    }
}
