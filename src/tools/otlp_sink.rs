//! A real OTLP/gRPC trace receiver (`opentelemetry.proto.collector.trace.v1.TraceService`) on
//! an ephemeral local port, for the bench's tracing phase and the tests: it keeps the spans it
//! is sent (or only counts them), and can be stopped mid-run, as a collector that goes away.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use anyhow::Context;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    trace::v1::Span,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Request, Response, Status};

/// What the receiver was sent.
#[derive(Default)]
struct Received {
    /// Every span, when kept.
    spans: Mutex<Vec<Span>>,
    count: AtomicUsize,
    keep: bool,
}

struct Receiver(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        if self.0.keep {
            let mut kept = self.0.spans.lock().unwrap_or_else(PoisonError::into_inner);
            let before = kept.len();
            kept.extend(spans);
            self.0
                .count
                .fetch_add(kept.len() - before, Ordering::AcqRel);
        } else {
            self.0.count.fetch_add(spans.count(), Ordering::AcqRel);
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The running receiver.
pub struct OtlpSink {
    addr: SocketAddr,
    received: Arc<Received>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl OtlpSink {
    /// Listens on an ephemeral port of 127.0.0.1; `keep`: keep every span (for tests), or only
    /// count them.
    pub async fn start(keep: bool) -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), keep).await
    }

    /// [`OtlpSink::start`] on `addr`.
    pub async fn start_on(addr: SocketAddr, keep: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for OTLP on {addr}"))?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Received {
            keep,
            ..Received::default()
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(Receiver(Arc::clone(&received)));
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            received,
            stop: Some(stop),
            task,
        })
    }

    /// The endpoint to give the server (`--otlp-endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Spans received so far.
    pub fn count(&self) -> usize {
        self.received.count.load(Ordering::Acquire)
    }

    /// Every span received so far (only when started with `keep`).
    pub fn spans(&self) -> Vec<Span> {
        self.received
            .spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops listening and drops its connections: the collector is gone.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `spans` (one trace, as received) as an indented tree: each span with its duration, its
/// start after the root's, and its attributes; a span whose parent is not among them (the
/// caller's, or none) is a root.
pub fn tree(spans: &[Span]) -> String {
    let ids: Vec<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
    let mut out = String::new();
    let mut roots: Vec<&Span> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent_span_id.as_slice()))
        .collect();
    roots.sort_by_key(|s| s.start_time_unix_nano);
    for root in roots {
        write_span(&mut out, spans, root, root.start_time_unix_nano, 0);
    }
    out
}

fn write_span(out: &mut String, spans: &[Span], span: &Span, origin: u64, depth: usize) {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let ms = |nanos: u64| nanos as f64 / 1e6;
    let attributes: Vec<String> = span
        .attributes
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                Value::DoubleValue(d) => d.to_string(),
                Value::BoolValue(b) => b.to_string(),
                _ => return None,
            };
            Some(format!("{}={value}", kv.key))
        })
        .collect();
    let links = match span.links.len() {
        0 => String::new(),
        n => format!(" ({n} link{})", if n == 1 { "" } else { "s" }),
    };
    out.push_str(&format!(
        "{:indent$}{} {:.2} ms (+{:.2}){links}  {}\n",
        "",
        span.name,
        ms(span
            .end_time_unix_nano
            .saturating_sub(span.start_time_unix_nano)),
        ms(span.start_time_unix_nano.saturating_sub(origin)),
        attributes.join(" "),
        indent = depth * 2
    ));
    let mut children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == span.span_id)
        .collect();
    children.sort_by_key(|s| s.start_time_unix_nano);
    for child in children {
        write_span(out, spans, child, origin, depth + 1);
    }
}
