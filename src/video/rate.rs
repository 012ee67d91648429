//! `max_fps`: which frames to take, judged by the client's timestamps alone.
//!
//! Client time, not arrival time: a replay sent faster than real time, or frames bunched by the
//! network, are thinned exactly as the camera produced them, and the result is reproducible.

/// A token bucket of one frame. Credit starts full; each frame adds the time since the previous
/// frame times `max_fps` (capped at one frame), and a frame is taken when a whole frame of
/// credit is there (less 1%, so that timestamps rounded to microseconds do not lose frames at
/// exactly the rate).
#[derive(Debug, Clone)]
pub struct RateGate {
    max_fps: f64,
    credit: f64,
    last_us: Option<i64>,
}

/// How much of a frame's credit may be missing for it to be taken anyway.
const SLACK: f64 = 0.01;

impl RateGate {
    /// `max_fps` 0 takes every frame.
    pub fn new(max_fps: f32) -> Self {
        Self {
            max_fps: f64::from(max_fps),
            credit: 1.0,
            last_us: None,
        }
    }

    /// Whether the frame at `timestamp_us` is taken. A timestamp below the previous one (a new
    /// clip, a seek) fills the credit again.
    pub fn admit(&mut self, timestamp_us: i64) -> bool {
        if self.max_fps <= 0.0 {
            return true;
        }
        self.credit = match self.last_us {
            Some(last) if timestamp_us >= last => {
                let earned = (timestamp_us - last) as f64 * self.max_fps / 1e6;
                (self.credit + earned).min(1.0)
            }
            _ => 1.0,
        };
        self.last_us = Some(timestamp_us);
        if self.credit >= 1.0 - SLACK {
            self.credit -= 1.0;
            true
        } else {
            false
        }
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
    fn a_backwards_timestamp_starts_afresh() {
        let mut gate = RateGate::new(1.0);
        assert_eq!(
            taken(&mut gate, [1_000_000, 1_100_000, 0, 100_000]),
            vec![1_000_000, 0]
        );
    }

    #[test]
    fn credit_never_banks_more_than_one_frame() {
        let mut gate = RateGate::new(10.0);
        // After a long pause, a burst gets one frame, not ten.
        assert_eq!(
            taken(&mut gate, [0, 10_000_000, 10_000_001, 10_000_002]).len(),
            2
        );
    }
}
