//! What a stream watches: the per-stream state that turns a sequence of classified frames into
//! smoothed probabilities and enter/leave events (issue 15). Pure logic, no transport and no
//! runtime: the gRPC layer feeds it one classified frame at a time, in frame order.
//!
//! - [`smoothing`]: an EMA or a running median per label.
//! - [`hysteresis`]: enter/leave thresholds and the run of frames that fires an event.
//! - [`tracker`]: that state per (area, label) across a stream's configurations.
//! - [`heartbeat`]: when an events-only stream owes the client a sign of life.

pub mod heartbeat;
pub mod hysteresis;
pub mod smoothing;
pub mod tracker;
