//! When an events-only stream owes its client a message although no event fired.
//!
//! Judged by the frames' client timestamps, not by a server timer: the answer is exact and
//! testable, follows a replay at any speed, and silence then means that no frame is being handled
//! (a timer would say "alive" while inference hangs).

/// The heartbeat clock of one events-only stream.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    every_us: i64,
    /// Timestamp of the frame of the last message sent; `None` before the first.
    last: Option<i64>,
}

/// `Events.heartbeat_ms = 0` means this.
const DEFAULT_MS: u32 = 5000;

impl Heartbeat {
    /// A heartbeat every `ms` milliseconds of client time (0: every 5000).
    pub fn new(ms: u32) -> Self {
        let ms = if ms == 0 { DEFAULT_MS } else { ms };
        Self {
            every_us: i64::from(ms) * 1000,
            last: None,
        }
    }

    /// Whether a frame taken up at `ts` (its `timestamp_us`) is due a message: the first one is;
    /// after that, one `every` later, or one whose timestamp went backwards (a new clip, a seek).
    pub fn due(&self, ts: i64) -> bool {
        match self.last {
            None => true,
            // Saturating: timestamps are whatever the client sends, the extremes included.
            Some(last) => ts < last || ts.saturating_sub(last) >= self.every_us,
        }
    }

    /// A new config's interval (0: every 5000 ms), keeping the time of the last message.
    pub fn retime(&mut self, ms: u32) {
        self.every_us = Self::new(ms).every_us;
    }

    /// A message went out for the frame at `ts`, heartbeat or event: the clock restarts there.
    pub fn sent(&mut self, ts: i64) {
        self.last = Some(ts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_frame_is_due() {
        assert!(Heartbeat::new(1000).due(123_456_789));
        assert!(Heartbeat::new(1000).due(0));
        assert!(Heartbeat::new(1000).due(i64::MIN));
    }

    #[test]
    fn due_once_the_interval_has_passed_since_the_last_message() {
        let mut hb = Heartbeat::new(1000);
        hb.sent(10_000);
        assert!(!hb.due(10_000));
        assert!(!hb.due(1_009_999));
        assert!(hb.due(1_010_000));
        assert!(hb.due(5_000_000));
    }

    #[test]
    fn any_message_restarts_the_clock() {
        let mut hb = Heartbeat::new(1000);
        hb.sent(0);
        // An event message at 0.7 s: the next heartbeat is due at 1.7 s, not 1 s.
        hb.sent(700_000);
        assert!(!hb.due(1_000_000));
        assert!(!hb.due(1_699_999));
        assert!(hb.due(1_700_000));
    }

    #[test]
    fn a_timestamp_that_goes_backwards_is_due() {
        let mut hb = Heartbeat::new(1000);
        hb.sent(5_000_000);
        assert!(hb.due(4_999_999));
        assert!(hb.due(0));
    }

    #[test]
    fn zero_means_five_seconds() {
        let mut hb = Heartbeat::new(0);
        hb.sent(0);
        assert!(!hb.due(4_999_999));
        assert!(hb.due(5_000_000));
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let mut hb = Heartbeat::new(1);
        hb.sent(i64::MIN);
        assert!(hb.due(i64::MAX));
        hb.sent(i64::MAX);
        assert!(!hb.due(i64::MAX));
        assert!(hb.due(i64::MIN));
    }

    #[test]
    fn a_new_interval_keeps_the_last_message_time() {
        let mut hb = Heartbeat::new(5000);
        hb.sent(0);
        assert!(!hb.due(1_000_000));
        hb.retime(1000);
        assert!(hb.due(1_000_000));
        assert!(!hb.due(999_999));
    }
}
