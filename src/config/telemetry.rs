//! Logs and distributed traces.

use clap::Args;

use crate::telemetry;

/// Where spans go and how many: OpenTelemetry over OTLP/gRPC, off unless an endpoint is given.
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// OTLP/gRPC endpoint of an OpenTelemetry Collector (e.g. http://otel-collector:4317): every
    /// call of the two APIs becomes a span, with the caller's trace context (W3C `traceparent`,
    /// B3) as its parent. Unset: no spans.
    #[arg(long, env = "SIGLIP_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The `service.name` of the exported spans.
    #[arg(long, env = "SIGLIP_OTLP_SERVICE_NAME", default_value = "siglip-serve")]
    pub otlp_service_name: String,

    /// Share of calls with no trace context (or a B3 one that leaves the decision to us) that
    /// start a trace (0 to 1). A caller's sampled flag is always followed, "not sampled" too.
    #[arg(long, env = "SIGLIP_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,

    /// Share of a traced stream's frames (and ModelStreamInfer requests) that get spans of their
    /// own (0 to 1): an hour of video must not export an hour of spans.
    #[arg(long, env = "SIGLIP_TRACE_FRAME_RATIO", default_value_t = 0.01)]
    pub trace_frame_ratio: f64,

    /// Finished spans held for export; past this, new ones are dropped (and counted in
    /// `siglip_trace_spans_dropped_total`) rather than held while the collector is slow or down.
    #[arg(long, env = "SIGLIP_TRACE_QUEUE_SPANS", default_value_t = 8192)]
    pub trace_queue_spans: usize,
}

impl TraceArgs {
    pub fn check(&self) -> anyhow::Result<()> {
        for (flag, ratio) in [
            ("--trace-sample-ratio", self.trace_sample_ratio),
            ("--trace-frame-ratio", self.trace_frame_ratio),
        ] {
            if !(0.0..=1.0).contains(&ratio) {
                anyhow::bail!("{flag} must be between 0 and 1, got {ratio}");
            }
        }
        if self.trace_queue_spans == 0 {
            anyhow::bail!("--trace-queue-spans must be at least 1");
        }
        if let Some(endpoint) = self.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
            if !endpoint.starts_with("http://") {
                anyhow::bail!(
                    "--otlp-endpoint {endpoint}: only http:// (plaintext OTLP/gRPC) is supported; \
                     reach the Collector over the pod network or the mesh"
                );
            }
        }
        Ok(())
    }

    /// What the trace export runs with; `None` when it is off.
    pub fn export(&self) -> Option<telemetry::Export> {
        Some(telemetry::Export {
            endpoint: self.otlp_endpoint.clone().filter(|e| !e.is_empty())?,
            service_name: self.otlp_service_name.clone(),
            sample_ratio: self.trace_sample_ratio,
            frame_ratio: self.trace_frame_ratio,
            queue_spans: self.trace_queue_spans,
        })
    }
}
