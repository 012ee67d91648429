//! Watching a stream: smoothing, enter/leave events with hysteresis, events-only mode with
//! heartbeats, and a config replaced mid-stream — each checked exactly against a small reference
//! implementation written here from the proto's definitions (nothing imported from the server).
//!
//! Random weights give each photo distinct probabilities. A pan over four photos is streamed
//! once without watching, to measure every frame's raw probabilities; thresholds are chosen from
//! them, away from every value the reference computes, so that the ~1e-7 a different batch
//! composition moves a raw value cannot flip an event. The reference is then fed the raw
//! probabilities the server reported in the watched run, and must predict its events exactly.

use siglip_serve::grpc::pb::{self, stream_request::Msg};
use tonic::Code;

use crate::common::{asset, server::Server};
use crate::{assert_status, encoded, stream_all, LABELS};

/// The reference: what the proto says, in the most direct code.
mod reference {
    pub fn ema(alpha: f32, ps: &[f32]) -> Vec<f32> {
        let mut out: Vec<f32> = Vec::with_capacity(ps.len());
        for &p in ps {
            let s = match out.last() {
                None => p,
                Some(&prev) => alpha * p + (1.0 - alpha) * prev,
            };
            out.push(s);
        }
        out
    }

    pub fn median(k: usize, ps: &[f32]) -> Vec<f32> {
        (0..ps.len())
            .map(|i| {
                let mut w = ps[(i + 1).saturating_sub(k)..=i].to_vec();
                w.sort_by(f32::total_cmp);
                let n = w.len();
                if n % 2 == 1 {
                    w[n / 2]
                } else {
                    (w[n / 2 - 1] + w[n / 2]) / 2.0
                }
            })
            .collect()
    }

    /// (position in `vs`, true for ENTER) of every event.
    pub fn events(enter: f32, leave: f32, min_frames: u32, vs: &[f32]) -> Vec<(usize, bool)> {
        let (mut inside, mut run, mut out) = (false, 0, vec![]);
        for (i, &v) in vs.iter().enumerate() {
            let counts = if inside { v <= leave } else { v >= enter };
            run = if counts { run + 1 } else { 0 };
            if run == min_frames {
                inside = !inside;
                run = 0;
                out.push((i, inside));
            }
        }
        out
    }

    /// Which frames get a message in events-only mode: the first, those with an event, and
    /// those at least `every_us` of client time after the previous message.
    pub fn messages(timestamps: &[i64], with_event: &[bool], every_us: i64) -> Vec<usize> {
        let mut last: Option<i64> = None;
        let mut out = vec![];
        for (i, &ts) in timestamps.iter().enumerate() {
            let beat = last.is_none_or(|l| ts - l >= every_us || ts < l);
            if with_event[i] || beat {
                out.push(i);
                last = Some(ts);
            }
        }
        out
    }
}

const PHOTOS: [&str; 4] = [
    "chelsea_progressive.jpg",
    "rocket.bmp",
    "coffee_444.jpg",
    "astronaut_224.jpg",
];
const FRAME_US: i64 = 33_333;

/// A pan: each photo for `hold` frames, twice round. Returns each frame's photo index.
fn pan(hold: usize) -> Vec<usize> {
    (0..2 * PHOTOS.len() * hold)
        .map(|i| (i / hold) % PHOTOS.len())
        .collect()
}

fn config(watch: impl FnOnce(&mut pb::StreamConfig)) -> pb::StreamRequest {
    let mut config = pb::StreamConfig {
        model: String::new(),
        texts: LABELS.iter().map(|s| s.to_string()).collect(),
        mode: pb::DeliveryMode::EveryFrame as i32,
        ..Default::default()
    };
    watch(&mut config);
    pb::StreamRequest {
        msg: Some(Msg::Config(config)),
    }
}

fn frames(sequence: &[usize], photos: &[Vec<u8>]) -> Vec<pb::StreamRequest> {
    sequence
        .iter()
        .enumerate()
        .map(|(k, &photo)| pb::StreamRequest {
            msg: Some(Msg::Frame(pb::Frame {
                frame_id: k as u64,
                timestamp_us: k as i64 * FRAME_US,
                image: encoded(photos[photo].clone()),
                ..Default::default()
            })),
        })
        .collect()
}

fn photos() -> Vec<Vec<u8>> {
    PHOTOS.iter().map(|p| asset(p)).collect()
}

/// Raw probabilities per label (by label index) of each whole-frame result.
fn raw(results: &[pb::StreamResponse]) -> Vec<Vec<f32>> {
    results.iter().map(|r| by_label(&r.scores)).collect()
}

fn by_label(scores: &[pb::LabelScore]) -> Vec<f32> {
    let mut out = vec![f32::NAN; LABELS.len()];
    for s in scores {
        out[s.index as usize] = s.probability;
    }
    out
}

fn column(rows: &[Vec<f32>], label: usize) -> Vec<f32> {
    rows.iter().map(|r| r[label]).collect()
}

/// Thresholds between the values `smooth` makes of the label with the widest spread: enter
/// between the two values around the 70th percentile, leave around the 30th, each at least 1e-6
/// from every value (asserted: random weights give spreads of 1e-3 and more).
fn thresholds(rows: &[Vec<f32>], smooth: &dyn Fn(&[f32]) -> Vec<f32>) -> (usize, f32, f32) {
    let spread = |l: usize| {
        let c = column(rows, l);
        c.iter().cloned().fold(f32::MIN, f32::max) - c.iter().cloned().fold(f32::MAX, f32::min)
    };
    let label = (0..LABELS.len())
        .max_by(|&a, &b| spread(a).total_cmp(&spread(b)))
        .unwrap();
    let mut values = smooth(&column(rows, label));
    values.sort_by(f32::total_cmp);
    // Values a few ulps apart are the same value (a photo seen again in another batch).
    values.dedup_by(|a, b| (*a - *b).abs() < 1e-5);
    let between = |q: f64| {
        let i = ((values.len() - 1) as f64 * q) as usize;
        let t = (values[i] + values[i + 1]) / 2.0;
        assert!(
            values.iter().all(|v| (v - t).abs() > 2e-6),
            "no clear threshold near {t} in {values:?}"
        );
        t
    };
    (label, between(0.7), between(0.3))
}

/// An event as the reference predicts it and the server reports it.
#[derive(Debug, PartialEq)]
struct Event {
    frame: u64,
    label: u32,
    enter: bool,
    region: Option<u32>,
}

fn reported(results: &[pb::StreamResponse]) -> Vec<Event> {
    results
        .iter()
        .flat_map(|r| {
            r.events.iter().map(move |e| {
                assert_eq!(e.frame_id, r.frame_id);
                assert_eq!(e.timestamp_us, r.timestamp_us);
                assert_eq!(e.label, LABELS[e.index as usize]);
                Event {
                    frame: e.frame_id,
                    label: e.index,
                    enter: e.kind == pb::EventKind::Enter as i32,
                    region: e.region,
                }
            })
        })
        .collect()
}

/// Every label's predicted events on one area's raw rows, in frame order then label order.
fn predicted(
    rows: &[Vec<f32>],
    smooth: &dyn Fn(&[f32]) -> Vec<f32>,
    (enter, leave, min_frames): (f32, f32, u32),
    region: Option<u32>,
) -> Vec<Event> {
    let mut out = vec![];
    for label in 0..LABELS.len() {
        let vs = smooth(&column(rows, label));
        for (i, enters) in reference::events(enter, leave, min_frames, &vs) {
            out.push(Event {
                frame: i as u64,
                label: label as u32,
                enter: enters,
                region,
            });
        }
    }
    out.sort_by_key(|e| (e.frame, e.region, e.label));
    out
}

fn sorted(mut events: Vec<Event>) -> Vec<Event> {
    events.sort_by_key(|e| (e.frame, e.region, e.label));
    events
}

/// Streams the pan once unwatched (raw probabilities), then watched with `smoothing` and events
/// chosen from the first run; checks the smoothed values and the events against the reference.
async fn check_tracking(
    server: &Server,
    smoothing: Option<pb::smoothing::Method>,
    smooth: &dyn Fn(&[f32]) -> Vec<f32>,
    min_frames: u32,
) -> usize {
    let mut client = server.client().await;
    let photos = photos();
    let sequence = pan(6);
    let mut plain = vec![config(|_| {})];
    plain.extend(frames(&sequence, &photos));
    let first = raw(&stream_all(&mut client, plain).await);
    let (label, enter, leave) = thresholds(&first, smooth);

    let mut watched = vec![config(|c| {
        c.smoothing = smoothing.map(|m| pb::Smoothing { method: Some(m) });
        c.events = Some(pb::Events {
            enter_threshold: enter,
            leave_threshold: leave,
            min_frames,
            ..Default::default()
        });
    })];
    watched.extend(frames(&sequence, &photos));
    let results = stream_all(&mut client, watched).await;
    assert_eq!(results.len(), sequence.len(), "one message per frame");
    let rows = raw(&results);
    for l in 0..LABELS.len() {
        let want = smooth(&column(&rows, l));
        for (r, w) in results.iter().zip(&want) {
            let s = r.scores.iter().find(|s| s.index as usize == l).unwrap();
            match smoothing {
                Some(_) => {
                    let got = s.smoothed_probability.expect("smoothed value");
                    assert!(
                        (got - w).abs() <= 1e-6,
                        "frame {}: {got} vs {w}",
                        r.frame_id
                    );
                }
                None => assert_eq!(s.smoothed_probability, None),
            }
        }
    }
    let want = predicted(&rows, smooth, (enter, leave, min_frames.max(1)), None);
    let got = sorted(reported(&results));
    assert_eq!(got, want, "label {label} enter {enter} leave {leave}");
    assert!(
        want.iter().any(|e| e.enter) && want.iter().any(|e| !e.enter),
        "the pan should make label {label} enter and leave: {want:?}"
    );
    for e in results.iter().flat_map(|r| &r.events) {
        let v = e.probability;
        let want_v = smooth(&column(&rows, e.index as usize))[e.frame_id as usize];
        assert!((v - want_v).abs() <= 1e-6, "{e:?}");
    }
    want.len()
}

#[tokio::test]
async fn raw_values_with_hysteresis_give_the_reference_events() {
    let server = Server::ready(&[]).await;
    for min_frames in [0, 1, 3] {
        check_tracking(&server, None, &|ps| ps.to_vec(), min_frames).await;
    }
}

#[tokio::test]
async fn an_ema_gives_the_reference_values_and_events() {
    let server = Server::ready(&[]).await;
    for min_frames in [1, 3] {
        let method = pb::smoothing::Method::EmaAlpha(0.4);
        check_tracking(
            &server,
            Some(method),
            &|ps| reference::ema(0.4, ps),
            min_frames,
        )
        .await;
    }
}

#[tokio::test]
async fn a_median_of_odd_and_even_windows_gives_the_reference_values_and_events() {
    let server = Server::ready(&[]).await;
    for k in [3u32, 4] {
        let method = pb::smoothing::Method::MedianK(k);
        let smooth = move |ps: &[f32]| reference::median(k as usize, ps);
        check_tracking(&server, Some(method), &smooth, 2).await;
    }
}

/// Events-only: the messages are exactly the frames the reference says (events, the first
/// frame, heartbeats), and each carries the frames classified since the previous one.
#[tokio::test]
async fn events_only_sends_the_events_and_the_heartbeats_nothing_else() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let photos = photos();
    let sequence = pan(6);
    let mut plain = vec![config(|_| {})];
    plain.extend(frames(&sequence, &photos));
    let rows = raw(&stream_all(&mut client, plain).await);
    let smooth = |ps: &[f32]| reference::ema(0.5, ps);
    let (_, enter, leave) = thresholds(&rows, &smooth);
    let heartbeat_ms = 500;
    let mut watched = vec![config(|c| {
        c.smoothing = Some(pb::Smoothing {
            method: Some(pb::smoothing::Method::EmaAlpha(0.5)),
        });
        c.events = Some(pb::Events {
            enter_threshold: enter,
            leave_threshold: leave,
            min_frames: 1,
            events_only: true,
            heartbeat_ms,
        });
    })];
    watched.extend(frames(&sequence, &photos));
    let results = stream_all(&mut client, watched).await;

    let events = predicted(&rows, &smooth, (enter, leave, 1), None);
    let timestamps: Vec<i64> = (0..sequence.len() as i64).map(|k| k * FRAME_US).collect();
    let with_event: Vec<bool> = (0..sequence.len())
        .map(|i| events.iter().any(|e| e.frame == i as u64))
        .collect();
    let mut want = reference::messages(&timestamps, &with_event, i64::from(heartbeat_ms) * 1000);
    // At the end, one more message about the last frame counts the frames since the last one.
    if want.last() != Some(&(sequence.len() - 1)) {
        want.push(sequence.len() - 1);
    }
    let got: Vec<usize> = results.iter().map(|r| r.frame_id as usize).collect();
    assert_eq!(got, want);
    let beats = results.iter().filter(|r| r.heartbeat).count();
    let with_events = results.iter().filter(|r| !r.events.is_empty()).count();
    assert_eq!(results.len(), with_events + beats, "events plus heartbeats");
    assert!(beats > 0 && with_events > 0, "{got:?}");
    assert_eq!(sorted(reported(&results)), events);
    let classified: u64 = results.iter().map(|r| r.classified_frames).sum();
    assert_eq!(
        classified,
        sequence.len() as u64,
        "every frame counted once"
    );
    for r in &results {
        assert!(r.heartbeat == r.events.is_empty(), "{r:?}");
    }
}

/// A new config that swaps one label keeps the others' state: their events go on as if nothing
/// happened, and the new label starts afresh.
#[tokio::test]
async fn a_new_config_keeps_the_state_of_the_labels_it_keeps() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let photos = photos();
    let sequence = pan(6);
    let half = sequence.len() / 2;
    let mut plain = vec![config(|_| {})];
    plain.extend(frames(&sequence, &photos));
    let rows = raw(&stream_all(&mut client, plain).await);
    let smooth = |ps: &[f32]| reference::ema(0.3, ps);
    let (label, enter, leave) = thresholds(&rows, &smooth);
    let watch = |c: &mut pb::StreamConfig| {
        c.smoothing = Some(pb::Smoothing {
            method: Some(pb::smoothing::Method::EmaAlpha(0.3)),
        });
        c.events = Some(pb::Events {
            enter_threshold: enter,
            leave_threshold: leave,
            min_frames: 1,
            ..Default::default()
        });
    };
    // Another label replaces one that is not the watched one; the order changes too.
    let swapped = (label + 1) % LABELS.len();
    let mut texts: Vec<String> = LABELS.iter().map(|s| s.to_string()).collect();
    texts[swapped] = "a new label".into();
    texts.reverse();
    let all = frames(&sequence, &photos);
    let mut messages = vec![config(watch)];
    messages.extend(all[..half].iter().cloned());
    messages.push(config(|c| {
        watch(c);
        c.texts = texts.clone();
    }));
    messages.extend(all[half..].iter().cloned());
    let results = stream_all(&mut client, messages).await;
    let kept_rows: Vec<f32> = results
        .iter()
        .map(|r| {
            r.scores
                .iter()
                .find(|s| s.label == LABELS[label])
                .unwrap()
                .probability
        })
        .collect();
    let vs = smooth(&kept_rows);
    let want: Vec<(u64, bool)> = reference::events(enter, leave, 1, &vs)
        .into_iter()
        .map(|(i, e)| (i as u64, e))
        .collect();
    let got: Vec<(u64, bool)> = results
        .iter()
        .flat_map(|r| &r.events)
        .filter(|e| e.label == LABELS[label])
        .map(|e| (e.frame_id, e.kind == pb::EventKind::Enter as i32))
        .collect();
    assert_eq!(
        got, want,
        "the kept label's events run on across the change"
    );
    for r in &results[half..] {
        assert_eq!(r.config_generation, 1);
        let s = r.scores.iter().find(|s| s.label == LABELS[label]).unwrap();
        assert_eq!(texts[s.index as usize], LABELS[label], "its new index");
    }
    // The new label starts fresh: its first smoothed value is its first raw value.
    let first_new = results[half]
        .scores
        .iter()
        .find(|s| s.label == "a new label")
        .unwrap();
    assert_eq!(first_new.smoothed_probability, Some(first_new.probability));
}

#[tokio::test]
async fn bad_watch_settings_end_the_stream_with_invalid_argument() {
    use pb::smoothing::Method;
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let events = |enter, leave| {
        Some(pb::Events {
            enter_threshold: enter,
            leave_threshold: leave,
            ..Default::default()
        })
    };
    let smoothing = |m| Some(pb::Smoothing { method: m });
    type Case = (&'static str, Box<dyn Fn(&mut pb::StreamConfig)>);
    let cases: Vec<Case> = vec![
        (
            "set ema_alpha or median_k",
            Box::new(move |c| c.smoothing = smoothing(None)),
        ),
        (
            "ema_alpha = 0",
            Box::new(move |c| c.smoothing = smoothing(Some(Method::EmaAlpha(0.0)))),
        ),
        (
            "ema_alpha = 1.5",
            Box::new(move |c| c.smoothing = smoothing(Some(Method::EmaAlpha(1.5)))),
        ),
        (
            "ema_alpha = NaN",
            Box::new(move |c| c.smoothing = smoothing(Some(Method::EmaAlpha(f32::NAN)))),
        ),
        (
            "median_k = 0",
            Box::new(move |c| c.smoothing = smoothing(Some(Method::MedianK(0)))),
        ),
        (
            "median_k = 300",
            Box::new(move |c| c.smoothing = smoothing(Some(Method::MedianK(300)))),
        ),
        (
            "enter_threshold = 0",
            Box::new(move |c| c.events = events(0.0, 0.0)),
        ),
        (
            "leave_threshold = 1",
            Box::new(move |c| c.events = events(1.0, 1.0)),
        ),
        (
            "leave must be below enter",
            Box::new(move |c| c.events = events(0.6, 0.7)),
        ),
        (
            "leave must be below enter",
            Box::new(move |c| c.events = events(0.6, 0.6)),
        ),
        (
            "min_frames = 20000",
            Box::new(move |c| {
                c.events = events(0.6, 0.2);
                c.events.as_mut().unwrap().min_frames = 20_000;
            }),
        ),
        (
            "heartbeats only exist in events-only mode",
            Box::new(move |c| {
                c.events = events(0.6, 0.2);
                c.events.as_mut().unwrap().heartbeat_ms = 100;
            }),
        ),
    ];
    for (needle, setup) in cases {
        let outcome: Vec<_> = futures_util::StreamExt::collect(
            client
                .stream(tokio_stream::iter(vec![config(|c| setup(c))]))
                .await
                .expect("stream opens")
                .into_inner(),
        )
        .await;
        let status = outcome
            .into_iter()
            .find_map(Result::err)
            .unwrap_or_else(|| panic!("{needle}: accepted"));
        assert_status(needle, &status, Code::InvalidArgument, needle);
    }
}

/// Regions: each (region, label) has its own smoothing and hysteresis; the reference, run per
/// region on that region's raw probabilities, predicts every event with its region.
#[tokio::test]
async fn events_are_kept_per_region_and_label() {
    let server = Server::ready(&[]).await;
    let mut client = server.client().await;
    let photos = photos();
    let sequence = pan(6);
    // Both inside the smallest photo (224x224), overlapping.
    let regions = vec![
        pb::Region {
            x: 0,
            y: 0,
            width: 112,
            height: 112,
        },
        pb::Region {
            x: 100,
            y: 60,
            width: 124,
            height: 164,
        },
    ];
    let per_region = |results: &[pb::StreamResponse], area: usize| -> Vec<Vec<f32>> {
        results
            .iter()
            .map(|r| {
                assert_eq!(r.regions.len(), 2, "{r:?}");
                by_label(&r.regions[area].scores)
            })
            .collect()
    };
    let mut plain = vec![config(|c| c.regions = regions.clone())];
    plain.extend(frames(&sequence, &photos));
    let first = stream_all(&mut client, plain).await;
    let smooth = |ps: &[f32]| reference::ema(0.4, ps);
    let (_, enter, leave) = thresholds(&per_region(&first, 0), &smooth);

    let mut watched = vec![config(|c| {
        c.regions = regions.clone();
        c.smoothing = Some(pb::Smoothing {
            method: Some(pb::smoothing::Method::EmaAlpha(0.4)),
        });
        c.events = Some(pb::Events {
            enter_threshold: enter,
            leave_threshold: leave,
            min_frames: 2,
            ..Default::default()
        });
    })];
    watched.extend(frames(&sequence, &photos));
    let results = stream_all(&mut client, watched).await;
    let mut want = vec![];
    for area in 0..2 {
        let rows = per_region(&results, area);
        want.extend(predicted(
            &rows,
            &smooth,
            (enter, leave, 2),
            Some(area as u32),
        ));
        for (r, row) in results.iter().zip(&rows) {
            for s in &r.regions[area].scores {
                let v = s.smoothed_probability.expect("smoothed value");
                assert!(v.is_finite() && row[s.index as usize] == s.probability);
            }
        }
    }
    let want = sorted(want);
    assert!(want.iter().any(|e| e.region == Some(0)), "{want:?}");
    assert_eq!(sorted(reported(&results)), want);
}
