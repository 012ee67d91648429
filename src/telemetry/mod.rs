//! Logs and distributed traces: `tracing` to stderr (text or JSON), and, with `--otlp-endpoint`,
//! OpenTelemetry spans exported over OTLP/gRPC in batches, off the request path.
//!
//! A call of either API becomes a server span ([`call_span`]) whose parent is the caller's trace
//! context from the gRPC metadata (W3C `traceparent`/`tracestate`, or B3 single or multi-header,
//! as Envoy-based meshes send it). Under it, one span per stage ([`stage`]): admission, decode,
//! preprocess, tokenise or text-cache hit, queue and inference, reassembly on Upload. A batch
//! runs many calls, so it is a span of its own, linked to each call it ran (`crate::batch`).
//! A stream's frames get spans of their own at `--trace-frame-ratio` ([`FrameSampler`]).
//!
//! Spans carry OpenTelemetry's RPC attributes and counts (`siglip.images`, `siglip.texts`),
//! never what a caller sent: no image bytes, label texts, tokens or certificates.
//!
//! With tracing off no span is made: [`call_span`] and everything under it are
//! `Span::none()`, which costs a branch.

mod export;
mod propagation;

use std::{
    io::IsTerminal,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::Duration,
};

use anyhow::Context as _;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{trace::SdkTracerProvider, Resource};
use tracing::{field::Empty, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt, Layer};

/// The target of every span this module exports: the exporter's filter lets these through (and
/// nothing else), whatever `RUST_LOG` says of the logs.
pub const TARGET: &str = "siglip_serve::trace";

/// How long an export may take before its spans count as lost.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a shutdown waits for the last spans to be exported.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Set once tracing is on: every span helper checks it first.
static TRACING: OnceLock<Tracing> = OnceLock::new();

struct Tracing {
    propagator: propagation::Propagator,
    frame_ratio: f64,
}

/// Where spans go and how many (`--otlp-endpoint` and the flags beside it).
#[derive(Debug, Clone)]
pub struct Export {
    /// The collector's OTLP/gRPC endpoint.
    pub endpoint: String,
    pub service_name: String,
    /// Share of calls with no trace context that start a trace.
    pub sample_ratio: f64,
    /// Share of a traced stream's frames with spans of their own.
    pub frame_ratio: f64,
    /// Finished spans held for export at most.
    pub queue_spans: usize,
}

/// The running exporter; [`Telemetry::shutdown`] exports what is left.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still waiting, for at most two seconds: a collector that is down must
    /// not hold up the exit.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
                tracing::warn!(error = %e, "the last spans were not all exported");
            }
        }
    }
}

/// Starts the logs and, with `export`, the trace export. Must run inside the Tokio runtime (the
/// OTLP client's connection lives on it).
pub fn init(export: Option<Export>, log_json: bool) -> anyhow::Result<Telemetry> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        // The logs see the spans of traced calls and frames (never their stages) whatever the
        // level: a line logged inside one carries its `trace_id` and `span_id`.
        .add_directive(format!("{TARGET}=info").parse().expect("a valid directive"));
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let logs = match log_json {
        true => logs.json().boxed(),
        false => logs.boxed(),
    };
    let registry = tracing_subscriber::registry().with(logs.with_filter(filter));
    let Some(settings) = export else {
        registry.init();
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(&settings.endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .with_context(|| format!("--otlp-endpoint {}", settings.endpoint))?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(export::Bounded::new(exporter, settings.queue_spans))
        .with_sampler(export::FollowCalls {
            ratio: settings.sample_ratio,
        })
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name)
                .build(),
        )
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("siglip-serve"))
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE));
    registry.with(spans).init();
    let _ = TRACING.set(Tracing {
        propagator: propagation::Propagator::new(),
        frame_ratio: settings.frame_ratio,
    });
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Whether spans are exported at all.
pub fn enabled() -> bool {
    TRACING.get().is_some()
}

/// The server span of a call to `service`/`method`, child of the caller's trace context in
/// `headers`; `Span::none()` when tracing is off or the call is not sampled. JSON log lines
/// inside it carry its `trace_id` and `span_id`.
pub fn call_span(service: &str, method: &str, headers: &http::HeaderMap) -> Span {
    let Some(tracing) = TRACING.get() else {
        return Span::none();
    };
    let parent = tracing.propagator.extract(headers);
    let span = tracing::info_span!(
        target: TARGET,
        "call",
        otel.name = format!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        siglip.model = Empty,
        siglip.images = Empty,
        siglip.texts = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    let _ = span.set_parent(parent);
    sampled_or_none(span)
}

/// `span` if its trace is sampled (recording its ids for the logs), `Span::none()` otherwise:
/// a span nobody exports need not be made, nor anything under it.
fn sampled_or_none(span: Span) -> Span {
    let context = span.context();
    let ids = context.span().span_context().clone();
    if !ids.is_sampled() {
        return Span::none();
    }
    // Fields, so that the log lines inside carry them (they are exported as attributes too).
    span.record("trace_id", tracing::field::display(ids.trace_id()));
    span.record("span_id", tracing::field::display(ids.span_id()));
    span
}

/// A stage of the current call or frame (`name`: admission, decode, …), ended when dropped;
/// `Span::none()` outside a traced one.
pub fn stage(name: &'static str) -> Span {
    child(&Span::current(), name)
}

/// A stage of the call or frame `parent`; `Span::none()` if that is not traced.
pub fn child(parent: &Span, name: &'static str) -> Span {
    if parent.is_none() {
        return Span::none();
    }
    tracing::trace_span!(target: TARGET, parent: parent, "stage", otel.name = name, siglip.tower = Empty, siglip.dropped = Empty)
}

/// Notes on the current call (or frame) span how many images it carries.
pub fn record_images(images: usize) {
    Span::current().record("siglip.images", images as i64);
}

/// Notes on the current call (or frame) span how many texts (labels) it carries.
pub fn record_texts(texts: usize) {
    Span::current().record("siglip.texts", texts as i64);
}

/// Notes the model on the current call span.
pub fn record_model(model: &str) {
    let span = Span::current();
    if !span.is_none() && !model.is_empty() {
        span.record("siglip.model", model);
    }
}

/// Notes how the current call ended: its gRPC status code, and an error status for the codes
/// OpenTelemetry's RPC conventions count as a server's errors.
pub fn record_status(code: tonic::Code) {
    let span = Span::current();
    if span.is_none() {
        return;
    }
    span.record("rpc.grpc.status_code", code as i64);
    use tonic::Code::*;
    if matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    ) {
        span.record("otel.status_code", "ERROR");
    }
}

/// Which of a traced stream's frames (or streamed requests) get spans: `--trace-frame-ratio` of
/// them, evenly spaced (the 1st, then one each 1/ratio), so that the count is exact and a long
/// stream exports a bounded share.
pub struct FrameSampler {
    stream: Span,
    seen: AtomicU64,
}

impl FrameSampler {
    /// For the stream whose span is current.
    pub fn new() -> Self {
        Self {
            stream: Span::current(),
            seen: AtomicU64::new(0),
        }
    }

    /// The span of the next frame (`kind`: "frame" or "request"), or `Span::none()` when the
    /// stream is not traced or this frame is not one of the sampled share.
    pub fn next(&self, kind: &'static str, id: u64) -> Span {
        let Some(tracing) = TRACING.get() else {
            return Span::none();
        };
        if self.stream.is_none() {
            return Span::none();
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        if !takes(tracing.frame_ratio, n) {
            return Span::none();
        }
        let span = tracing::info_span!(
            target: TARGET,
            parent: &self.stream,
            "frame",
            otel.name = kind,
            siglip.frame = id as i64,
            siglip.images = Empty,
            siglip.texts = Empty,
            trace_id = Empty,
            span_id = Empty,
        );
        sampled_or_none(span)
    }
}

impl Default for FrameSampler {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether the `n`th item (from 0) is among a `ratio` share taken evenly: the first, then each
/// one at which the running share reaches a whole item (every 1/ratio-th).
fn takes(ratio: f64, n: u64) -> bool {
    let n = n as f64;
    ratio > 0.0 && (n * ratio).floor() > ((n - 1.0) * ratio).floor()
}

#[cfg(test)]
mod tests {
    use super::takes;

    #[test]
    fn frames_are_taken_at_the_ratio_evenly() {
        for (ratio, n, expected) in [
            (1.0, 100, 100),
            (0.1, 100, 10),
            (0.01, 1000, 10),
            (0.0, 100, 0),
        ] {
            let taken = (0..n).filter(|&i| takes(ratio, i)).count();
            assert_eq!(taken, expected, "ratio {ratio}: {taken} of {n}");
        }
        assert!(takes(0.1, 0), "the first frame is taken");
        assert!(!takes(0.1, 1));
    }
}
