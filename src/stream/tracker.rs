//! A stream's smoothing and event state, per (area, label), across its configurations.
//!
//! An area is the whole frame (`None`) or region `i` of the frame's region list (`Some(i)`). A
//! label is known by its text and by which occurrence of that text it is in the label list, so
//! that duplicate labels keep separate state and a reordered list keeps each label's history.
//!
//! Memory stays bounded without a cap of its own: state exists only for the areas seen times the
//! labels of the current config, and areas are at most `--max-regions` + 1 (regions are keyed by
//! position, and a frame lists at most `--max-regions`), labels at most `--max-texts`.

use std::collections::HashMap;

use super::hysteresis::{EventKind, Hysteresis, LabelState};
use super::smoothing::{Smoother, Smoothing};

/// What a stream's config asks to track (validated): neither part set means plain results.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracking {
    pub smoothing: Option<Smoothing>,
    pub events: Option<Hysteresis>,
}

/// One area's answer for one classified frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Per label, in label order: the smoothed probability (the raw one without smoothing).
    pub values: Vec<f32>,
    /// The events this frame completed: (label index, kind, the value that fired it).
    pub events: Vec<(usize, EventKind, f32)>,
}

/// A label's identity across configs: its text and its occurrence of that text in the list.
type LabelKey = (String, u32);

#[derive(Debug, Clone)]
struct Slot {
    smoother: Option<Smoother>,
    hysteresis: LabelState,
}

impl Slot {
    fn fresh(tracking: &Tracking) -> Self {
        Self {
            smoother: tracking.smoothing.map(Smoother::new),
            hysteresis: LabelState::default(),
        }
    }
}

#[derive(Debug)]
pub struct Tracker {
    tracking: Tracking,
    keys: Vec<LabelKey>,
    /// Per area, one slot per label in `keys` order; an area gets its slots at its first frame.
    areas: HashMap<Option<u32>, Vec<Slot>>,
}

fn label_keys(labels: &[String]) -> Vec<LabelKey> {
    let mut seen: HashMap<&str, u32> = HashMap::new();
    labels
        .iter()
        .map(|text| {
            let occurrence = seen.entry(text).or_insert(0);
            let key = (text.clone(), *occurrence);
            *occurrence += 1;
            key
        })
        .collect()
}

impl Tracker {
    pub fn new(tracking: Tracking, labels: &[String]) -> Self {
        Self {
            tracking,
            keys: label_keys(labels),
            areas: HashMap::new(),
        }
    }

    fn stateless(&self) -> bool {
        self.tracking.smoothing.is_none() && self.tracking.events.is_none()
    }

    /// A new config: keys present in both label lists keep their state (at their new index);
    /// added labels start fresh; removed ones are dropped. A changed smoothing spec resets
    /// every smoother; a changed events spec resets every hysteresis; `regions_changed` drops
    /// all Some(_) area state.
    pub fn reconfigure(&mut self, tracking: Tracking, labels: &[String], regions_changed: bool) {
        let keys = label_keys(labels);
        let reset_smoothing = tracking.smoothing != self.tracking.smoothing;
        let reset_events = tracking.events != self.tracking.events;
        if regions_changed {
            self.areas.retain(|area, _| area.is_none());
        }
        let old: HashMap<&LabelKey, usize> =
            self.keys.iter().enumerate().map(|(i, k)| (k, i)).collect();
        for slots in self.areas.values_mut() {
            let mut previous: Vec<Option<Slot>> =
                std::mem::take(slots).into_iter().map(Some).collect();
            *slots = keys
                .iter()
                .map(|key| match old.get(key).and_then(|&i| previous[i].take()) {
                    Some(mut slot) => {
                        if reset_smoothing {
                            slot.smoother = tracking.smoothing.map(Smoother::new);
                        }
                        if reset_events {
                            slot.hysteresis = LabelState::default();
                        }
                        slot
                    }
                    None => Slot::fresh(&tracking),
                })
                .collect();
        }
        self.keys = keys;
        self.tracking = tracking;
        // Nothing to remember without smoothing or events; switching either back on is a changed
        // spec, which starts from fresh state anyway.
        if self.stateless() {
            self.areas.clear();
        }
    }

    /// One classified frame's raw probabilities for one area, in label order. Returns the
    /// smoothed values (== p without smoothing) and the events fired, as (label index, kind, v).
    pub fn observe(&mut self, area: Option<u32>, probs: &[f32]) -> Observed {
        assert_eq!(
            probs.len(),
            self.keys.len(),
            "a frame's scores must follow the current config's labels (reconfigure first)"
        );
        if self.stateless() {
            return Observed {
                values: probs.to_vec(),
                events: Vec::new(),
            };
        }
        let tracking = &self.tracking;
        let slots = self
            .areas
            .entry(area)
            .or_insert_with(|| probs.iter().map(|_| Slot::fresh(tracking)).collect());
        let mut events = Vec::new();
        let values = slots
            .iter_mut()
            .zip(probs)
            .enumerate()
            .map(|(i, (slot, &p))| {
                let v = slot.smoother.as_mut().map_or(p, |s| s.push(p));
                if let Some(h) = &tracking.events {
                    if let Some(kind) = slot.hysteresis.step(h, v) {
                        events.push((i, kind, v));
                    }
                }
                v
            })
            .collect();
        Observed { values, events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind::{Enter, Leave};

    const EMA: Option<Smoothing> = Some(Smoothing::Ema { alpha: 0.5 });
    const EVENTS: Option<Hysteresis> = Some(Hysteresis {
        enter: 0.6,
        leave: 0.4,
        min_frames: 1,
    });

    fn labels(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    fn tracking(smoothing: Option<Smoothing>, events: Option<Hysteresis>) -> Tracking {
        Tracking { smoothing, events }
    }

    #[test]
    fn without_smoothing_or_events_values_are_the_raw_probabilities() {
        let mut t = Tracker::new(tracking(None, None), &labels(&["a", "b"]));
        let seen = t.observe(None, &[0.9, 0.1]);
        assert_eq!(seen.values, [0.9, 0.1]);
        assert!(seen.events.is_empty());
        assert!(t.areas.is_empty());
    }

    #[test]
    fn events_without_smoothing_fire_on_the_raw_value() {
        let mut t = Tracker::new(tracking(None, EVENTS), &labels(&["a", "b"]));
        assert_eq!(t.observe(None, &[0.7, 0.1]).events, [(0, Enter, 0.7)]);
        let seen = t.observe(None, &[0.3, 0.8]);
        assert_eq!(seen.values, [0.3, 0.8]);
        assert_eq!(seen.events, [(0, Leave, 0.3), (1, Enter, 0.8)]);
    }

    #[test]
    fn events_fire_on_the_smoothed_value() {
        let mut t = Tracker::new(tracking(EMA, EVENTS), &labels(&["a"]));
        assert!(t.observe(None, &[0.2]).events.is_empty());
        // 0.5*1 + 0.5*0.2 = 0.6: exactly the enter threshold.
        assert_eq!(t.observe(None, &[1.0]).events, [(0, Enter, 0.6)]);
    }

    #[test]
    fn areas_keep_separate_state() {
        let mut t = Tracker::new(tracking(EMA, EVENTS), &labels(&["a"]));
        t.observe(None, &[0.8]);
        assert_eq!(t.observe(Some(0), &[0.2]).values, [0.2]);
        assert_eq!(t.observe(Some(1), &[0.6]).values, [0.6]);
        assert_eq!(t.observe(None, &[0.4]).values, [0.6]);
        assert_eq!(t.observe(Some(0), &[0.4]).values, [0.3]);
    }

    #[test]
    fn duplicate_labels_keep_separate_state() {
        let mut t = Tracker::new(tracking(EMA, EVENTS), &labels(&["cat", "dog", "cat"]));
        let seen = t.observe(None, &[0.9, 0.1, 0.2]);
        assert_eq!(seen.events, [(0, Enter, 0.9)]);
        let seen = t.observe(None, &[0.1, 0.1, 0.2]);
        assert_eq!(seen.values, [0.5, 0.1, 0.2]);
        // Reordered: the first "cat" stays first, the second one moves to index 1.
        t.reconfigure(
            tracking(EMA, EVENTS),
            &labels(&["cat", "cat", "dog"]),
            false,
        );
        let seen = t.observe(None, &[0.1, 1.0, 0.1]);
        assert_eq!(seen.values, [0.3, 0.6, 0.1]);
        assert_eq!(seen.events, [(0, Leave, 0.3), (1, Enter, 0.6)]);
    }

    #[test]
    fn a_reordered_label_list_keeps_each_labels_state() {
        let events = Some(Hysteresis {
            min_frames: 3,
            ..EVENTS.unwrap()
        });
        let mut t = Tracker::new(tracking(EMA, events), &labels(&["a", "b"]));
        t.observe(None, &[0.8, 0.2]);
        t.observe(None, &[0.8, 0.2]);
        t.observe(Some(0), &[0.2, 0.8]);
        t.reconfigure(tracking(EMA, events), &labels(&["b", "a"]), false);
        // EMA continues from 0.2 (b) and 0.8 (a); a's run of 2 completes on its third frame.
        let seen = t.observe(None, &[0.4, 0.8]);
        assert_eq!(seen.values, [0.3, 0.8]);
        assert_eq!(seen.events, [(1, Enter, 0.8)]);
        // Regions unchanged: region 0 keeps its state too.
        assert_eq!(t.observe(Some(0), &[0.4, 0.4]).values, [0.6, 0.3]);
    }

    #[test]
    fn added_labels_start_fresh_and_removed_ones_are_forgotten() {
        let mut t = Tracker::new(tracking(EMA, EVENTS), &labels(&["a", "b"]));
        assert_eq!(t.observe(None, &[0.9, 0.9]).events.len(), 2);
        t.reconfigure(tracking(EMA, EVENTS), &labels(&["a", "c"]), false);
        let seen = t.observe(None, &[0.9, 0.9]);
        // a: 0.9 still inside, no event; c: first value, ENTER.
        assert_eq!(seen.values, [0.9, 0.9]);
        assert_eq!(seen.events, [(1, Enter, 0.9)]);
        t.reconfigure(tracking(EMA, EVENTS), &labels(&["a", "b"]), false);
        let seen = t.observe(None, &[0.1, 0.7]);
        assert_eq!(seen.values, [0.5, 0.7]);
        assert_eq!(seen.events, [(1, Enter, 0.7)]);
    }

    #[test]
    fn a_changed_smoothing_spec_resets_smoothers_only() {
        let mut t = Tracker::new(tracking(EMA, EVENTS), &labels(&["a"]));
        assert_eq!(t.observe(None, &[0.9]).events, [(0, Enter, 0.9)]);
        let median = Some(Smoothing::Median { k: 3 });
        t.reconfigure(tracking(median, EVENTS), &labels(&["a"]), false);
        // A fresh median sees one value; the label is still inside: no second ENTER.
        let seen = t.observe(None, &[0.7]);
        assert_eq!(seen.values, [0.7]);
        assert!(seen.events.is_empty());
        let seen = t.observe(None, &[0.1]);
        assert_eq!(seen.values, [0.4]);
        assert_eq!(seen.events, [(0, Leave, 0.4)]);
    }

    #[test]
    fn a_changed_events_spec_resets_hysteresis_only() {
        let mut t = Tracker::new(tracking(EMA, EVENTS), &labels(&["a"]));
        assert_eq!(t.observe(None, &[0.9]).events, [(0, Enter, 0.9)]);
        let events = Some(Hysteresis {
            enter: 0.5,
            ..EVENTS.unwrap()
        });
        t.reconfigure(tracking(EMA, events), &labels(&["a"]), false);
        // The EMA continues (0.5*0.5 + 0.5*0.9 = 0.7); the label starts outside: ENTER again.
        let seen = t.observe(None, &[0.5]);
        assert_eq!(seen.values, [0.7]);
        assert_eq!(seen.events, [(0, Enter, 0.7)]);
    }

    #[test]
    fn an_unchanged_config_keeps_all_state() {
        let events = Some(Hysteresis {
            min_frames: 2,
            ..EVENTS.unwrap()
        });
        let mut t = Tracker::new(tracking(EMA, events), &labels(&["a"]));
        t.observe(Some(2), &[0.8]);
        t.reconfigure(tracking(EMA, events), &labels(&["a"]), false);
        let seen = t.observe(Some(2), &[0.8]);
        assert_eq!(seen.events, [(0, Enter, 0.8)]);
    }

    #[test]
    fn changed_regions_drop_region_state_and_keep_the_whole_frame() {
        let mut t = Tracker::new(tracking(EMA, EVENTS), &labels(&["a"]));
        t.observe(None, &[0.8]);
        t.observe(Some(0), &[0.8]);
        t.reconfigure(tracking(EMA, EVENTS), &labels(&["a"]), true);
        assert_eq!(t.observe(None, &[0.4]).values, [0.6]);
        // Region 0 is new: a fresh EMA, outside again, so 0.9 enters.
        let seen = t.observe(Some(0), &[0.9]);
        assert_eq!(seen.values, [0.9]);
        assert_eq!(seen.events, [(0, Enter, 0.9)]);
    }

    #[test]
    fn turning_tracking_off_forgets_state() {
        let mut t = Tracker::new(tracking(EMA, EVENTS), &labels(&["a"]));
        t.observe(None, &[0.8]);
        t.reconfigure(tracking(None, None), &labels(&["a"]), false);
        assert!(t.areas.is_empty());
        assert_eq!(t.observe(None, &[0.2]).values, [0.2]);
        t.reconfigure(tracking(EMA, EVENTS), &labels(&["a"]), false);
        assert_eq!(t.observe(None, &[0.2]).values, [0.2]);
    }
}
