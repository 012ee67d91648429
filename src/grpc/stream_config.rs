//! A stream's configuration, checked: from `StreamConfig` to the settings the stream runs with.
//! Every value outside its range is refused with a message that names the field and the range,
//! and the stream ends (it is the client's setup that is wrong, not one frame).
//!
//! Public for the fuzz target (`fuzz/fuzz_targets/request.rs`).

use std::time::Duration;

use super::{convert, pb};
use crate::error::{Error, Result};
use crate::model::scores::ScoreFilter;
use crate::video::Policy;

/// A `StreamConfig` without its texts (those are embedded separately), validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub filter: ScoreFilter,
    pub policy: Policy,
}

pub fn settings(config: &pb::StreamConfig) -> Result<Settings> {
    Ok(Settings {
        filter: convert::filter(config.options)?,
        policy: policy(config.policy)?,
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

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: pb::StreamConfig) -> String {
        settings(&config).expect_err("refused").to_string()
    }

    #[test]
    fn a_config_without_new_fields_is_all_off() {
        let s = settings(&pb::StreamConfig::default()).unwrap();
        assert_eq!(s.policy, Policy::default());
    }

    #[test]
    fn policy_values_are_checked() {
        for fps in [f32::NAN, f32::INFINITY, -1.0] {
            let message = refused(pb::StreamConfig {
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
}
