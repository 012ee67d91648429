//! What a stream watches: which frames are worth classifying, and what the stream makes of the
//! results over time. Plain logic, no gRPC and no runtime: `grpc::stream` and `grpc::report`
//! drive it, one frame at a time, in frame order.
//!
//! - [`rate`]: `max_fps`, judged by the client's timestamps.
//! - [`drops`]: why a frame got no message of its own, counted by reason.
//! - [`smoothing`]: an EMA or a running median per label.
//! - [`hysteresis`]: enter/leave thresholds and the run of frames that fires an event.
//! - [`tracker`]: that state per (area, label) across a stream's configurations.
//! - [`heartbeat`]: when an events-only stream owes the client a sign of life.

pub mod drops;
pub mod heartbeat;
pub mod hysteresis;
pub mod rate;
pub mod smoothing;
pub mod tracker;

use std::time::Duration;

/// Which frames a stream classifies (`FramePolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Policy {
    /// Frames per second of client time; 0 takes every frame.
    pub max_fps: f32,
    /// Longest a frame may wait, from its last byte to its inference; `None` waits as long as
    /// it takes.
    pub max_age: Option<Duration>,
}
