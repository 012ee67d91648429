//! From finished spans to the collector: which spans are sampled, and a bounded export that
//! never makes a call wait and counts every span it loses.

use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use ::metrics::counter;
use opentelemetry::{
    trace::{Link, SpanKind, TraceContextExt, TraceFlags, TraceId},
    Context, KeyValue,
};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{
        BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult, ShouldSample, Span,
        SpanData, SpanExporter, SpanProcessor,
    },
    Resource,
};

use crate::metrics;

/// A span with a parent follows the parent's sampled flag (a caller's, or the call it belongs
/// to), unless that parent is a B3 context that defers the decision (no `x-b3-sampled`): then,
/// like a root, by `ratio`. A span with no parent but links (a batch, linked to the calls it
/// runs) is sampled when any call it links to is; any other root (a call with no traced
/// caller) by `ratio`.
#[derive(Debug, Clone)]
pub(super) struct FollowCalls {
    pub(super) ratio: f64,
}

impl ShouldSample for FollowCalls {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let parent_span = parent
            .filter(|cx| cx.has_active_span())
            .map(|cx| cx.span().span_context().clone());
        let by_ratio = || {
            let ratio = Sampler::TraceIdRatioBased(self.ratio);
            let result = ratio.should_sample(None, trace_id, name, kind, attributes, links);
            result.decision == SamplingDecision::RecordAndSample
        };
        let sampled = match parent_span {
            Some(parent) if deferred(parent.trace_flags()) => by_ratio(),
            Some(parent) => parent.is_sampled(),
            None if !links.is_empty() => links.iter().any(|l| l.span_context.is_sampled()),
            None => by_ratio(),
        };
        SamplingResult {
            decision: match sampled {
                true => SamplingDecision::RecordAndSample,
                false => SamplingDecision::Drop,
            },
            attributes: Vec::new(),
            trace_state: parent
                .map(|cx| cx.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

/// B3's "deferred" flag (`opentelemetry_propagator_b3`'s 0x02): the caller made no sampling
/// decision and leaves it to the receiver.
fn deferred(flags: TraceFlags) -> bool {
    !flags.is_sampled() && flags.to_u8() & 0x02 != 0
}

/// The batch processor behind a bound of our own: a span that finds `capacity` spans already
/// waiting or being exported is dropped and counted, so that a slow or absent collector costs
/// the calls nothing (the processor's own queue never fills: its drops would go uncounted).
pub(super) struct Bounded {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    capacity: usize,
}

impl Bounded {
    pub(super) fn new(exporter: opentelemetry_otlp::SpanExporter, capacity: usize) -> Self {
        let pending = Arc::new(AtomicUsize::new(0));
        let exporter = Counted {
            inner: exporter,
            pending: Arc::clone(&pending),
            failing: AtomicBool::new(false),
        };
        // The other settings are the SDK's defaults, or its OTEL_BSP_* variables.
        let config = opentelemetry_sdk::trace::BatchConfigBuilder::default()
            .with_max_queue_size(capacity)
            .build();
        let inner = BatchSpanProcessor::builder(exporter)
            .with_batch_config(config)
            .build();
        Self {
            inner,
            pending,
            capacity,
        }
    }
}

impl fmt::Debug for Bounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bounded")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            counter!(metrics::TRACE_SPANS_DROPPED, "reason" => "queue_full").increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what it exports and what it loses, and saying once (not per
/// batch) when the collector stops and starts answering.
struct Counted {
    inner: opentelemetry_otlp::SpanExporter,
    pending: Arc<AtomicUsize>,
    failing: AtomicBool,
}

impl fmt::Debug for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counted")
    }
}

impl SpanExporter for Counted {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        self.pending.fetch_sub(spans, Ordering::AcqRel);
        match &result {
            Ok(()) => {
                counter!(metrics::TRACE_SPANS_EXPORTED).increment(spans as u64);
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("the OTLP endpoint accepts spans again");
                }
            }
            Err(e) => {
                counter!(metrics::TRACE_SPANS_DROPPED, "reason" => "export_failed")
                    .increment(spans as u64);
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "cannot export spans to the OTLP endpoint; dropping them until it answers");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceState};

    use super::*;

    fn decide(ratio: f64, parent: Option<TraceFlags>) -> bool {
        let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let cx = parent.map(|flags| {
            let remote = SpanContext::new(
                trace,
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                flags,
                true,
                TraceState::default(),
            );
            Context::new().with_remote_span_context(remote)
        });
        let result = FollowCalls { ratio }.should_sample(
            cx.as_ref(),
            trace,
            "call",
            &SpanKind::Server,
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }

    #[test]
    fn a_parent_decides_unless_it_defers_to_the_ratio() {
        assert!(decide(0.0, Some(TraceFlags::SAMPLED)), "a sampled parent");
        assert!(
            !decide(1.0, Some(TraceFlags::default())),
            "a parent that says no"
        );
        let deferred = TraceFlags::new(0x02);
        assert!(
            decide(1.0, Some(deferred)),
            "B3 without a decision, ratio 1"
        );
        assert!(
            !decide(0.0, Some(deferred)),
            "B3 without a decision, ratio 0"
        );
        assert!(
            decide(1.0, None) && !decide(0.0, None),
            "no parent: the ratio"
        );
    }
}
