//! A stream's configuration, checked: from `StreamConfig` to the [`Settings`] the stream runs
//! with.
//! Every value outside its range is refused with a message that names the field and the range,
//! and the stream ends (it is the client's setup that is wrong, not one frame).
//!
//! Public for the fuzz target (`fuzz/fuzz_targets/request.rs`).

use std::time::Duration;

use super::super::{convert, pb};
use crate::error::{Error, Result};
use crate::model::image::{self, Region};
use crate::stream::{
    hysteresis::Hysteresis, smoothing::Smoothing, tracker::Tracking, Policy, Settings,
};

/// The longest median window: state per label stays small.
pub const MAX_MEDIAN_K: u32 = 255;
/// The longest run of frames an event may need.
pub const MAX_MIN_FRAMES: u32 = 10_000;

/// `max_regions`: `--max-regions`.
pub fn from_config(config: &pb::StreamConfig, max_regions: usize) -> Result<Settings> {
    let (events, events_only) = events(config.events)?;
    Ok(Settings {
        filter: convert::filter(config.options)?,
        policy: policy(config.policy)?,
        tracking: Tracking {
            smoothing: smoothing(config.smoothing)?,
            events,
        },
        events_only,
        regions: regions(&config.regions, max_regions)?,
    })
}

pub fn policy(policy: Option<pb::FramePolicy>) -> Result<Policy> {
    let Some(p) = policy else {
        return Ok(Policy::default());
    };
    if !p.max_fps.is_finite() || p.max_fps < 0.0 {
        return Err(invalid(format!(
            "policy.max_fps = {} must be a finite number >= 0 (0: no limit)",
            p.max_fps
        )));
    }
    Ok(Policy {
        max_fps: p.max_fps,
        max_age: (p.max_age_ms > 0).then(|| Duration::from_millis(u64::from(p.max_age_ms))),
    })
}

pub fn smoothing(s: Option<pb::Smoothing>) -> Result<Option<Smoothing>> {
    let Some(s) = s else { return Ok(None) };
    match s.method {
        None => Err(invalid(
            "smoothing: set ema_alpha or median_k (or leave smoothing unset)".into(),
        )),
        Some(pb::smoothing::Method::EmaAlpha(alpha)) => {
            if alpha > 0.0 && alpha <= 1.0 {
                Ok(Some(Smoothing::Ema { alpha }))
            } else {
                Err(invalid(format!(
                    "smoothing.ema_alpha = {alpha} is outside (0, 1]: 1 keeps the raw value, smaller values smooth more"
                )))
            }
        }
        Some(pb::smoothing::Method::MedianK(0)) => Err(invalid(
            "smoothing.median_k = 0: the median needs at least 1 frame".into(),
        )),
        Some(pb::smoothing::Method::MedianK(k)) if k > MAX_MEDIAN_K => Err(invalid(format!(
            "smoothing.median_k = {k} is over {MAX_MEDIAN_K}"
        ))),
        Some(pb::smoothing::Method::MedianK(k)) => Ok(Some(Smoothing::Median { k })),
    }
}

/// The hysteresis, and the heartbeat interval when the stream is events-only.
pub fn events(e: Option<pb::Events>) -> Result<(Option<Hysteresis>, Option<u32>)> {
    let Some(e) = e else { return Ok((None, None)) };
    let (enter, leave) = (e.enter_threshold, e.leave_threshold);
    if !(enter > 0.0 && enter <= 1.0) {
        return Err(invalid(format!(
            "events.enter_threshold = {enter} is outside (0, 1]"
        )));
    }
    if !(0.0..1.0).contains(&leave) {
        return Err(invalid(format!(
            "events.leave_threshold = {leave} is outside [0, 1)"
        )));
    }
    if leave >= enter {
        return Err(invalid(format!(
            "events.leave_threshold {leave} >= enter_threshold {enter}: leave must be below enter (hysteresis)"
        )));
    }
    if e.min_frames > MAX_MIN_FRAMES {
        return Err(invalid(format!(
            "events.min_frames = {} is over {MAX_MIN_FRAMES}",
            e.min_frames
        )));
    }
    if e.heartbeat_ms > 0 && !e.events_only {
        return Err(invalid(
            "events.heartbeat_ms is set but events_only is not: heartbeats only exist in events-only mode".into(),
        ));
    }
    let hysteresis = Hysteresis {
        enter,
        leave,
        min_frames: e.min_frames.max(1),
    };
    Ok((Some(hysteresis), e.events_only.then_some(e.heartbeat_ms)))
}

pub fn regions(regions: &[pb::Region], max: usize) -> Result<Vec<Region>> {
    let regions: Vec<Region> = regions.iter().map(region).collect();
    image::check_shape(&regions, max).map_err(invalid)?;
    Ok(regions)
}

pub fn region(r: &pb::Region) -> Region {
    Region {
        x: r.x,
        y: r.y,
        width: r.width,
        height: r.height,
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: pb::StreamConfig) -> String {
        from_config(&config, 16).expect_err("refused").to_string()
    }

    #[test]
    fn a_config_without_new_fields_is_all_off() {
        let s = from_config(&pb::StreamConfig::default(), 16).unwrap();
        assert_eq!(s.policy, Policy::default());
        assert_eq!(
            s.tracking,
            Tracking {
                smoothing: None,
                events: None
            }
        );
        assert_eq!(s.events_only, None);
    }

    #[test]
    fn policy_values_are_checked() {
        for fps in [f32::NAN, f32::INFINITY, -1.0] {
            let message = refused(pb::StreamConfig {
                model: String::new(),
                policy: Some(pb::FramePolicy {
                    max_fps: fps,
                    max_age_ms: 0,
                }),
                ..Default::default()
            });
            assert!(message.contains("policy.max_fps"), "{message}");
        }
        let ok = policy(Some(pb::FramePolicy {
            max_fps: 12.5,
            max_age_ms: 250,
        }))
        .unwrap();
        assert_eq!(ok.max_fps, 12.5);
        assert_eq!(ok.max_age, Some(Duration::from_millis(250)));
    }

    #[test]
    fn smoothing_and_event_values_are_checked_and_normalised() {
        use pb::smoothing::Method;
        let smoothed = |m| smoothing(Some(pb::Smoothing { method: Some(m) }));
        assert_eq!(
            smoothed(Method::EmaAlpha(1.0)).unwrap(),
            Some(Smoothing::Ema { alpha: 1.0 })
        );
        assert_eq!(
            smoothed(Method::MedianK(255)).unwrap(),
            Some(Smoothing::Median { k: 255 })
        );
        for (m, needle) in [
            (Method::EmaAlpha(0.0), "ema_alpha = 0 is outside (0, 1]"),
            (Method::EmaAlpha(f32::NAN), "ema_alpha = NaN"),
            (Method::MedianK(0), "median_k = 0"),
            (Method::MedianK(256), "median_k = 256 is over 255"),
        ] {
            let message = smoothed(m).unwrap_err().to_string();
            assert!(message.contains(needle), "{message}");
        }
        let e = |enter, leave, min_frames, events_only, heartbeat_ms| {
            events(Some(pb::Events {
                enter_threshold: enter,
                leave_threshold: leave,
                min_frames,
                events_only,
                heartbeat_ms,
            }))
        };
        let (h, only) = e(0.6, 0.4, 0, true, 0).unwrap();
        assert_eq!(h.unwrap().min_frames, 1, "0 counts as 1");
        assert_eq!(only, Some(0));
        assert_eq!(e(1.0, 0.0, 10_000, false, 0).unwrap().1, None);
        for (result, needle) in [
            (e(0.0, 0.0, 1, false, 0), "enter_threshold = 0"),
            (e(f32::NAN, 0.0, 1, false, 0), "enter_threshold = NaN"),
            (e(0.5, -0.1, 1, false, 0), "leave_threshold = -0.1"),
            (e(0.5, 0.5, 1, false, 0), "leave must be below enter"),
            (
                e(0.5, 0.2, 10_001, false, 0),
                "min_frames = 10001 is over 10000",
            ),
            (
                e(0.5, 0.2, 1, false, 100),
                "heartbeats only exist in events-only mode",
            ),
        ] {
            let message = result.unwrap_err().to_string();
            assert!(message.contains(needle), "{message}");
        }
    }

    #[test]
    fn config_regions_are_checked_before_any_frame() {
        let region = |width, height| pb::Region {
            x: 0,
            y: 0,
            width,
            height,
        };
        let config = |regions: Vec<pb::Region>| pb::StreamConfig {
            model: String::new(),
            regions,
            ..Default::default()
        };
        let ok = from_config(&config(vec![region(10, 20)]), 16).unwrap();
        assert_eq!(ok.regions[0].height, 20);
        let message = refused(config(vec![region(1, 1); 17]));
        assert!(
            message.contains("17 regions exceed the limit of 16"),
            "{message}"
        );
        let message = refused(config(vec![region(1, 1), region(0, 40)]));
        assert!(message.contains("region 1 is empty (0x40)"), "{message}");
    }
}
