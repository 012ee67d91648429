//! The caller's trace context, from the gRPC metadata (HTTP/2 headers): W3C Trace Context
//! (`traceparent`, `tracestate`) and B3, single (`b3`) or multi-header (`x-b3-traceid`, …), as
//! Envoy-based meshes (Istio) send it. Where a call carries both, W3C's wins.

use opentelemetry::{
    propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator},
    Context,
};
use opentelemetry_propagator_b3::{B3Encoding, Propagator as B3};
use opentelemetry_sdk::propagation::TraceContextPropagator;

pub(super) struct Propagator(TextMapCompositePropagator);

impl Propagator {
    pub(super) fn new() -> Self {
        // Each extracts over what the one before found, when it finds a valid context itself:
        // the last one's wins.
        Self(TextMapCompositePropagator::new(vec![
            Box::new(B3::with_encoding(B3Encoding::SingleAndMultiHeader)),
            Box::new(TraceContextPropagator::new()),
        ]))
    }

    /// The caller's context, or an empty one (the call starts a trace).
    pub(super) fn extract(&self, headers: &http::HeaderMap) -> Context {
        self.0
            .extract_with_context(&Context::new(), &Headers(headers))
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    fn extracted(pairs: &[(&'static str, &str)]) -> Option<(String, String, bool)> {
        let mut headers = http::HeaderMap::new();
        for (k, v) in pairs {
            headers.insert(*k, v.parse().unwrap());
        }
        let cx = Propagator::new().extract(&headers);
        let span = cx.span();
        let ids = span.span_context();
        ids.is_valid().then(|| {
            (
                ids.trace_id().to_string(),
                ids.span_id().to_string(),
                ids.is_sampled(),
            )
        })
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn w3c_b3_single_and_b3_multi_are_read() {
        let want = Some((TRACE.to_string(), SPAN.to_string(), true));
        assert_eq!(
            extracted(&[("traceparent", &format!("00-{TRACE}-{SPAN}-01"))]),
            want
        );
        assert_eq!(extracted(&[("b3", &format!("{TRACE}-{SPAN}-1"))]), want);
        assert_eq!(
            extracted(&[
                ("x-b3-traceid", TRACE),
                ("x-b3-spanid", SPAN),
                ("x-b3-sampled", "1")
            ]),
            want
        );
        let unsampled = extracted(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))]);
        assert_eq!(unsampled.map(|(_, _, s)| s), Some(false));
    }

    #[test]
    fn w3c_wins_over_b3_and_garbage_is_no_parent() {
        let other = "a".repeat(32);
        let got = extracted(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("b3", &format!("{other}-{SPAN}-1")),
        ]);
        assert_eq!(got.map(|(t, _, _)| t), Some(TRACE.to_string()));
        assert_eq!(extracted(&[("traceparent", "00-zz-yy-01")]), None);
        assert_eq!(extracted(&[]), None);
    }
}
