//! What a stream watches: which frames are worth classifying, and what the stream makes of the
//! results over time. Plain logic, no gRPC and no runtime: the Stream protocol
//! (`grpc::api::stream`) drives it, one frame at a time, in frame order.
//!
//! - [`Settings`]: a stream's configuration, checked.
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

use crate::model::{image::Region, scores::ScoreFilter};
use tracker::Tracking;

/// A stream's configuration without its labels (those are embedded separately), checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub filter: ScoreFilter,
    pub policy: Policy,
    pub tracking: Tracking,
    /// Events-only mode, with its heartbeat interval in ms of client time (0: the default).
    pub events_only: Option<u32>,
    /// Classify these instead of the whole frame (a frame may bring its own).
    pub regions: Vec<Region>,
}

/// Which frames a stream classifies (`FramePolicy`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Policy {
    /// Frames per second of client time; 0 takes every frame.
    pub max_fps: f32,
    /// Longest a frame may wait, from its last byte to its inference; `None` waits as long as
    /// it takes.
    pub max_age: Option<Duration>,
}
