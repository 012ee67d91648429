//! What the core takes and gives besides images: its settings, label sets, answers and timings.

use std::time::Duration;

use super::Limits;
use crate::model::{
    image::Convention,
    scores::{Embeddings, Score},
};

/// How the core runs, beyond the model.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub limits: Limits,
    pub convention: Convention,
    /// Threads decoding and resizing images (0: one per core).
    pub preprocess_threads: usize,
    /// Text embeddings kept, keyed by token ids (0: off).
    pub text_cache_size: usize,
}

/// A label set with its text embeddings, computed once and reused (e.g. for a whole stream).
#[derive(Debug, Clone)]
pub struct Labels {
    pub texts: Vec<String>,
    pub embeddings: Embeddings,
}

/// Where the time of one request went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub queue: Duration,
    pub preprocess: Duration,
    pub inference: Duration,
    pub total: Duration,
    /// Images in the vision forward pass that served the request.
    pub batch_size: usize,
}

/// A stream frame's scores: per area (the whole frame, or each region), every label in label
/// order.
#[derive(Debug)]
pub struct FrameScores {
    pub areas: Vec<Vec<Score>>,
    pub timings: Timings,
}

#[derive(Debug, Clone)]
pub struct Classification {
    /// Highest probability first, after filtering.
    pub scores: Vec<Score>,
    pub timings: Timings,
}
