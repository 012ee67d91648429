//! Per-label smoothing over the frames a stream classifies: an exponential moving average or the
//! median of the last `k` raw probabilities. Both run in f32 in a fixed operation order, so that a
//! client (or a test) can reproduce the server's values exactly.

use std::collections::VecDeque;

/// A validated smoothing spec (`StreamConfig.smoothing`): `alpha` in (0, 1], `k` in 1..=255.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Smoothing {
    Ema { alpha: f32 },
    Median { k: u32 },
}

/// One label's smoothing state.
#[derive(Debug, Clone)]
pub struct Smoother {
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    Ema {
        alpha: f32,
        prev: Option<f32>,
    },
    /// `window` holds the last min(n, k) raw values, oldest first; `sorted` is scratch space kept
    /// to avoid an allocation per frame.
    Median {
        k: usize,
        window: VecDeque<f32>,
        sorted: Vec<f32>,
    },
}

impl Smoother {
    pub fn new(spec: Smoothing) -> Self {
        let state = match spec {
            Smoothing::Ema { alpha } => State::Ema { alpha, prev: None },
            Smoothing::Median { k } => {
                // k <= 255 once validated; max(1) keeps a bad spec from meaning "no values".
                let k = (k as usize).max(1);
                State::Median {
                    k,
                    window: VecDeque::with_capacity(k),
                    sorted: Vec::with_capacity(k),
                }
            }
        };
        Self { state }
    }

    /// Feeds one raw probability and returns the smoothed value.
    pub fn push(&mut self, p: f32) -> f32 {
        match &mut self.state {
            State::Ema { alpha, prev } => {
                // Exactly `alpha * p + (1 - alpha) * prev`, rounded after each operation (no
                // fused multiply-add): the documented formula a client reproduces bit for bit.
                let s = match *prev {
                    None => p,
                    Some(prev) => *alpha * p + (1.0 - *alpha) * prev,
                };
                *prev = Some(s);
                s
            }
            State::Median { k, window, sorted } => {
                if window.len() == *k {
                    window.pop_front();
                }
                window.push_back(p);
                sorted.clear();
                sorted.extend(window.iter().copied());
                sorted.sort_unstable_by(f32::total_cmp);
                let n = sorted.len();
                if n % 2 == 1 {
                    sorted[n / 2]
                } else {
                    (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: Smoothing, ps: &[f32]) -> Vec<f32> {
        let mut s = Smoother::new(spec);
        ps.iter().map(|&p| s.push(p)).collect()
    }

    #[test]
    fn ema_starts_at_the_first_value_then_blends() {
        let out = run(Smoothing::Ema { alpha: 0.5 }, &[0.8, 0.4, 0.0, 1.0]);
        // 0.8; 0.5*0.4 + 0.5*0.8 = 0.6; 0.5*0 + 0.5*0.6 = 0.3; 0.5*1 + 0.5*0.3 = 0.65
        assert_eq!(out, [0.8, 0.6, 0.3, 0.65]);
    }

    #[test]
    fn ema_follows_the_documented_f32_operation_order() {
        let (alpha, ps) = (0.3f32, [0.123_456_7f32, 0.987_654_3, 0.5, 0.000_1, 0.75]);
        let mut expected = Vec::new();
        let mut prev = ps[0];
        expected.push(prev);
        for &p in &ps[1..] {
            prev = alpha * p + (1.0 - alpha) * prev;
            expected.push(prev);
        }
        let out = run(Smoothing::Ema { alpha }, &ps);
        assert_eq!(
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn ema_with_alpha_one_keeps_the_raw_value() {
        let ps = [0.1, 0.9, 0.3, 0.7];
        assert_eq!(run(Smoothing::Ema { alpha: 1.0 }, &ps), ps);
    }

    #[test]
    fn median_of_an_odd_window() {
        let out = run(Smoothing::Median { k: 3 }, &[0.9, 0.1, 0.5, 0.2, 0.8, 0.7]);
        // windows: [.9] [.9 .1] [.9 .1 .5] [.1 .5 .2] [.5 .2 .8] [.2 .8 .7]
        assert_eq!(out, [0.9, 0.5, 0.5, 0.2, 0.5, 0.7]);
    }

    #[test]
    fn median_of_an_even_window_is_the_mean_of_the_middle_two() {
        let out = run(Smoothing::Median { k: 4 }, &[0.2, 0.6, 0.4, 1.0, 0.0]);
        // windows: [.2] [.2 .6] [.2 .6 .4] [.2 .6 .4 1] [.6 .4 1 0]
        let expected = [
            0.2,
            (0.2f32 + 0.6) / 2.0,
            0.4,
            (0.4f32 + 0.6) / 2.0,
            (0.4f32 + 0.6) / 2.0,
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn median_with_k_larger_than_the_frames_seen_uses_them_all() {
        let out = run(Smoothing::Median { k: 255 }, &[0.3, 0.1, 0.2]);
        assert_eq!(out, [0.3, (0.1f32 + 0.3) / 2.0, 0.2]);
    }

    #[test]
    fn median_of_one_is_the_raw_value() {
        let ps = [0.1, 0.9, 0.3];
        assert_eq!(run(Smoothing::Median { k: 1 }, &ps), ps);
    }
}
