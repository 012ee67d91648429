//! What a stream watches: which frames are worth classifying, and what the stream makes of the
//! results over time. Plain logic, no gRPC and no runtime: `grpc::stream` and `grpc::report`
//! drive it.

pub mod drops;
pub mod rate;

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
