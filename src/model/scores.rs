//! From embeddings to SigLIP's answer: an independent sigmoid per (image, text) pair, ranked.

use crate::error::{Error, Result};

/// Row-major `rows × dim` float32 embeddings, L2-normalised by the towers.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Embeddings {
    pub fn new(dim: usize, data: Vec<f32>) -> Self {
        debug_assert_eq!(data.len() % dim.max(1), 0);
        Self { dim, data }
    }

    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.dim)
    }
}

/// SigLIP's learned calibration: `logit = exp(logit_scale) · cos + logit_bias`.
#[derive(Debug, Clone, Copy)]
pub struct LogitHead {
    scale: f32,
    bias: f32,
}

impl LogitHead {
    /// `logit_scale` is the raw parameter (a log), as stored in the checkpoint.
    pub fn new(logit_scale: f32, logit_bias: f32) -> Self {
        Self {
            scale: logit_scale.exp(),
            bias: logit_bias,
        }
    }

    pub fn logit(&self, image: &[f32], text: &[f32]) -> f32 {
        let cos: f32 = image.iter().zip(text).map(|(a, b)| a * b).sum();
        cos * self.scale + self.bias
    }

    /// `images.len() × texts.len()` logits, row-major by image.
    pub fn logits(&self, images: &Embeddings, texts: &Embeddings) -> Vec<f32> {
        images
            .rows()
            .flat_map(|img| texts.rows().map(move |txt| self.logit(img, txt)))
            .collect()
    }
}

/// The probability of one label, independent of all others (not a softmax).
pub fn sigmoid(logit: f32) -> f32 {
    1.0 / (1.0 + (-logit).exp())
}

/// One label's answer for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub label: String,
    /// The label's position in the request.
    pub index: usize,
    pub probability: f32,
    pub logit: f32,
}

/// Which of the ranked labels to return.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreFilter {
    /// Keep labels with probability ≥ this (0 keeps all).
    pub threshold: f32,
    /// Keep the k most probable (0 keeps all).
    pub top_k: usize,
}

impl ScoreFilter {
    pub fn new(threshold: f32, top_k: usize) -> Result<Self> {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(Error::InvalidArgument(format!(
                "threshold {threshold} is outside [0, 1]: it compares against a probability"
            )));
        }
        Ok(Self { threshold, top_k })
    }
}

/// Every label scored against one image embedding, in label order.
pub fn score_all(
    head: LogitHead,
    image: &[f32],
    labels: &[String],
    texts: &Embeddings,
) -> Vec<Score> {
    labels
        .iter()
        .zip(texts.rows())
        .enumerate()
        .map(|(index, (label, text))| {
            let logit = head.logit(image, text);
            Score {
                label: label.clone(),
                index,
                probability: sigmoid(logit),
                logit,
            }
        })
        .collect()
}

/// The scores the filter keeps, most probable first.
pub fn select(mut scores: Vec<Score>, filter: ScoreFilter) -> Vec<Score> {
    scores.retain(|s| s.probability >= filter.threshold);
    scores.sort_by(|a, b| b.logit.total_cmp(&a.logit));
    if filter.top_k > 0 {
        scores.truncate(filter.top_k);
    }
    scores
}

/// Every label scored against one image embedding, most probable first, then filtered.
pub fn rank(
    head: LogitHead,
    image: &[f32],
    labels: &[String],
    texts: &Embeddings,
    filter: ScoreFilter,
) -> Vec<Score> {
    select(score_all(head, image, labels, texts), filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_follow_siglip_formula() {
        let head = LogitHead::new(10f32.ln(), -2.0);
        let images = Embeddings::new(2, vec![1.0, 0.0, 0.0, 1.0]);
        let texts = Embeddings::new(2, vec![0.6, 0.8]);
        let logits = head.logits(&images, &texts);
        assert!((logits[0] - (10.0 * 0.6 - 2.0)).abs() < 1e-5);
        assert!((logits[1] - (10.0 * 0.8 - 2.0)).abs() < 1e-5);
    }

    #[test]
    fn sigmoid_is_independent_per_label() {
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
        // Two confident labels may both be near 1: nothing normalises them against each other.
        assert!(sigmoid(8.0) + sigmoid(9.0) > 1.9);
        assert!(sigmoid(-30.0) > 0.0 && sigmoid(-30.0) < 1e-12);
    }
}
