//! Enter/leave events with hysteresis: a label enters after `min_frames` consecutive classified
//! frames at or above `enter`, and leaves after `min_frames` consecutive classified frames at or
//! below `leave`. The gap between the two thresholds, and the run length, keep a value that
//! hovers around one threshold from firing an event on every frame.

/// A validated events spec: `enter` in (0, 1], `leave` in [0, enter), `min_frames` >= 1 (the
/// config's 0 already normalised to 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hysteresis {
    pub enter: f32,
    pub leave: f32,
    pub min_frames: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Enter,
    Leave,
}

/// One (area, label)'s state: whether it is inside, and how many consecutive frames so far point
/// the other way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LabelState {
    inside: bool,
    run: u32,
}

impl LabelState {
    /// Feeds one classified frame's (smoothed) value; returns the event this frame completes.
    pub fn step(&mut self, h: &Hysteresis, v: f32) -> Option<EventKind> {
        let (towards, kind) = if self.inside {
            (v <= h.leave, EventKind::Leave)
        } else {
            (v >= h.enter, EventKind::Enter)
        };
        // A frame that does not point the other way breaks the run: "consecutive" is strict.
        self.run = if towards { self.run + 1 } else { 0 };
        if self.run == h.min_frames {
            self.inside = !self.inside;
            self.run = 0;
            Some(kind)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind::{Enter, Leave};

    fn run(h: Hysteresis, vs: &[f32]) -> Vec<Option<EventKind>> {
        let mut state = LabelState::default();
        vs.iter().map(|&v| state.step(&h, v)).collect()
    }

    const H1: Hysteresis = Hysteresis {
        enter: 0.6,
        leave: 0.4,
        min_frames: 1,
    };

    #[test]
    fn one_frame_enters_and_one_frame_leaves() {
        let out = run(H1, &[0.1, 0.7, 0.9, 0.5, 0.3, 0.2, 0.65]);
        assert_eq!(
            out,
            [
                None,
                Some(Enter),
                None,
                None,
                Some(Leave),
                None,
                Some(Enter)
            ]
        );
    }

    #[test]
    fn values_between_the_thresholds_fire_nothing() {
        assert_eq!(run(H1, &[0.5, 0.45, 0.59, 0.41]), [None; 4]);
        // Inside, values in the gap keep it inside.
        assert_eq!(
            run(H1, &[0.9, 0.5, 0.41, 0.59]),
            [Some(Enter), None, None, None]
        );
    }

    #[test]
    fn enter_at_exactly_the_threshold() {
        assert_eq!(run(H1, &[0.6]), [Some(Enter)]);
        assert_eq!(run(H1, &[0.6f32.next_down()]), [None]);
    }

    #[test]
    fn leave_at_exactly_the_threshold() {
        assert_eq!(run(H1, &[0.9, 0.4]), [Some(Enter), Some(Leave)]);
        assert_eq!(run(H1, &[0.9, 0.4f32.next_up()]), [Some(Enter), None]);
    }

    #[test]
    fn three_frames_are_needed_and_an_interrupted_run_starts_over() {
        let h = Hysteresis {
            min_frames: 3,
            ..H1
        };
        let vs = [
            0.7, 0.7, 0.5, // a run of 2, interrupted: nothing
            0.7, 0.7, 0.7, // ENTER on the third
            0.9, // inside: nothing
            0.3, 0.3, 0.45, // a leave run of 2, interrupted
            0.3, 0.3, 0.3, // LEAVE on the third
            0.8, // a new enter run starts from 0
        ];
        let out = run(h, &vs);
        let mut expected = [None; 14];
        expected[5] = Some(Enter);
        expected[12] = Some(Leave);
        assert_eq!(out, expected);
    }

    #[test]
    fn the_run_restarts_after_an_event() {
        let h = Hysteresis {
            min_frames: 2,
            ..H1
        };
        // After ENTER the run is 0: two low frames are needed, the enter frames do not count.
        let out = run(h, &[0.9, 0.9, 0.1, 0.1, 0.9, 0.9]);
        assert_eq!(
            out,
            [None, Some(Enter), None, Some(Leave), None, Some(Enter)]
        );
    }
}
