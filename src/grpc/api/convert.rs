//! Between protobuf messages and the core's types.
//!
//! Public for the fuzz target (`fuzz/fuzz_targets/request.rs`), which checks arbitrary messages
//! the way the RPCs do before the model.

use std::time::{Duration, Instant};

use tonic::{metadata::MetadataMap, Status};

use super::pb;
use crate::error::{Error, Result};
use crate::infer::{ImageInput, Timings};
use crate::model::image::{RawFormat, Region};
use crate::model::scores::{Score, ScoreFilter};
use crate::stream::drops::DropCounts;

pub fn image(image: Option<pb::Image>) -> Result<ImageInput> {
    let source = image.and_then(|i| i.source).ok_or_else(|| {
        Error::InvalidArgument("no image given: set image.encoded or image.raw".into())
    })?;
    Ok(match source {
        pb::image::Source::Encoded(bytes) => ImageInput::Encoded(bytes),
        pb::image::Source::Raw(raw) => ImageInput::Raw {
            width: raw.width,
            height: raw.height,
            format: match pb::PixelFormat::try_from(raw.format) {
                Ok(pb::PixelFormat::Rgb8) => RawFormat::Rgb8,
                Ok(pb::PixelFormat::Rgba8) => RawFormat::Rgba8,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "raw frame format {} is not supported: use PIXEL_FORMAT_RGB8 or PIXEL_FORMAT_RGBA8",
                        raw.format
                    )))
                }
            },
            data: raw.data,
        },
    })
}

/// A request's NaFlex patch budget: 0 (unset) is the model's default.
pub fn max_patches(value: u32) -> Option<u32> {
    (value != 0).then_some(value)
}

/// The NaFlex patch budget `ClassifyOptions` ask for (Classify, Upload, a stream's config).
pub fn options_patches(options: Option<pb::ClassifyOptions>) -> Option<u32> {
    max_patches(options.map_or(0, |o| o.max_num_patches))
}

pub fn filter(options: Option<pb::ClassifyOptions>) -> Result<ScoreFilter> {
    let o = options.unwrap_or_default();
    ScoreFilter::new(o.threshold, o.top_k as usize)
}

pub fn scores(scores: Vec<Score>) -> Vec<pb::LabelScore> {
    scores.into_iter().map(score).collect()
}

pub fn score(s: Score) -> pb::LabelScore {
    pb::LabelScore {
        label: s.label,
        probability: s.probability,
        logit: s.logit,
        index: s.index as u32,
        smoothed_probability: None,
    }
}

pub fn drops(d: DropCounts) -> pb::DropCounts {
    pb::DropCounts {
        superseded: d.superseded,
        rate: d.rate,
        stale: d.stale,
        error: d.error,
    }
}

pub fn region(r: Region) -> pb::Region {
    pb::Region {
        x: r.x,
        y: r.y,
        width: r.width,
        height: r.height,
    }
}

pub fn timings(t: Timings) -> pb::Timings {
    let us = |d: Duration| d.as_micros() as u64;
    pb::Timings {
        queue_us: us(t.queue),
        preprocess_us: us(t.preprocess),
        inference_us: us(t.inference),
        total_us: us(t.total),
        batch_size: t.batch_size as u32,
    }
}

/// The call's deadline: the caller's from the `grpc-timeout` header, or `default`
/// (`--request-timeout-seconds`) for a caller that sends none, so that no call waits forever.
pub fn deadline(metadata: &MetadataMap, default: Option<Duration>) -> Option<Instant> {
    callers_deadline(metadata).or_else(|| default.and_then(|d| Instant::now().checked_add(d)))
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`, gRPC over HTTP/2).
///
/// It is moved a little earlier than tonic's own timeout, which answers CANCELLED at the exact
/// deadline: the core answers DEADLINE_EXCEEDED (and drops the work) first.
fn callers_deadline(metadata: &MetadataMap) -> Option<Instant> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(timeout.saturating_sub(Duration::from_millis(2)))
}

/// Runs `work` until the caller's deadline; past it, answers DEADLINE_EXCEEDED and drops the work.
pub async fn with_deadline<T, E: Into<Status>>(
    deadline: Option<Instant>,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Status> {
    match deadline {
        None => work.await.map_err(Into::into),
        Some(at) => match tokio::time::timeout_at(at.into(), work).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(Status::deadline_exceeded(
                "deadline exceeded: the request did not finish in time (its own grpc-timeout, or \
                 --request-timeout-seconds when it sets none) and its work was dropped",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(raw: &str) -> Option<Duration> {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", raw.parse().unwrap());
        let before = Instant::now();
        deadline(&metadata, None).map(|at| at.saturating_duration_since(before))
    }

    #[test]
    fn reads_every_grpc_timeout_unit_and_ignores_malformed_ones() {
        let close = |raw: &str, want: Duration| {
            let got = timeout(raw).unwrap_or_else(|| panic!("{raw} not read"));
            // Moved 2 ms earlier than the caller's deadline; `before` was taken just before.
            let want = want.saturating_sub(Duration::from_millis(2));
            assert!(
                got >= want && got - want < Duration::from_millis(50),
                "{raw}: {got:?}"
            );
        };
        close("2H", Duration::from_secs(7200));
        close("3M", Duration::from_secs(180));
        close("4S", Duration::from_secs(4));
        close("250m", Duration::from_millis(250));
        close("250000u", Duration::from_millis(250));
        close("250000000n", Duration::from_millis(250));
        for bad in ["", "5", "5x", "S", "-5S", "1.5S"] {
            assert_eq!(timeout(bad), None, "{bad:?}");
        }
        assert_eq!(deadline(&MetadataMap::new(), None), None);
    }

    #[test]
    fn a_call_without_a_deadline_gets_the_servers_default() {
        let before = Instant::now();
        let default = Some(Duration::from_secs(30));
        let at = deadline(&MetadataMap::new(), default).expect("default deadline");
        assert!(at >= before + Duration::from_secs(30));
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "100m".parse().unwrap());
        let at = deadline(&metadata, default).expect("caller's deadline");
        assert!(
            at < before + Duration::from_secs(1),
            "the caller's own deadline wins"
        );
    }

    #[tokio::test]
    async fn work_past_its_deadline_is_dropped_with_deadline_exceeded() {
        let at = Instant::now() + Duration::from_millis(20);
        let never = std::future::pending::<Result<(), Status>>();
        let status = with_deadline(Some(at), never).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        let done = with_deadline(Some(at), async { Ok::<_, Status>(7) }).await;
        assert_eq!(done.unwrap(), 7);
    }
}
