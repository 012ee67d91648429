//! ModelStreamInfer: requests in, one response each, in order.
//!
//! Up to `--stream-pipeline` requests run at once, each on a task of its own, so that it
//! finishes (and frees what it holds of the server's budgets) whether or not the client reads;
//! a full pipeline stops the reading, so the client feels backpressure. A request that fails is
//! answered in `error_message`, with its id, and the stream goes on, as Triton does. The stream
//! itself ends as a siglip.v1 stream does: at its maximum lifetime or at shutdown (UNAVAILABLE,
//! after the requests already read are answered), for a client that goes silent or stops
//! reading (DEADLINE_EXCEEDED; then the requests running are dropped), or for a message that
//! cannot be read. It takes a stream slot (`--max-streams`) and is one flow of the fair queue,
//! and the label set it sent last is embedded once.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::Instant,
};

use futures_util::stream::{FuturesOrdered, StreamExt as _};
use tokio::{sync::OwnedSemaphorePermit, task::JoinHandle};
use tokio_stream::Stream;
use tonic::{Status, Streaming};

use super::infer::{Context, LastLabels};
use super::{models, pb, METHOD_STREAM};
use crate::grpc::api::{
    convert,
    status::remap_incoming,
    stream::{
        lifetime_over,
        outbox::{Outbox, Output},
        shutting_down, sleep_until, spawn,
    },
    Lifecycle,
};
use crate::grpc::calls::{client_gone, CallModel};
use crate::infer::Flow;
use crate::telemetry::FrameSampler;

type Response = pb::ModelStreamInferResponse;

/// Starts the stream; the returned stream yields its responses, then the status it ended with.
pub(super) fn run(
    lifecycle: Arc<Lifecycle>,
    input: Streaming<pb::ModelInferRequest>,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Output<Response>> {
    let limits = lifecycle.limits.clone();
    spawn(
        &limits,
        METHOD_STREAM,
        permit,
        move |model, out, ends_at| async move { drive(&lifecycle, &model, input, out, ends_at).await },
    )
}

/// What the stream's loop waits for.
enum Event {
    /// The oldest request running is answered.
    Answered(Response),
    /// The client's next message, its end (None), or a message that could not be read.
    Read(Result<Option<pb::ModelInferRequest>, Status>),
    /// The stream must end with this status.
    End(Status),
}

/// `model`: the repository model of the stream's first request, for the call's metrics.
async fn drive(
    lifecycle: &Arc<Lifecycle>,
    model: &CallModel,
    mut input: Streaming<pb::ModelInferRequest>,
    out: Outbox<Response>,
    ends_at: Option<tokio::time::Instant>,
) -> Result<(), Status> {
    let limits = &lifecycle.limits;
    let timeouts = lifecycle.timeouts();
    let mut shutdown = lifecycle.shutdown_signal();
    let pipeline = limits.stream_pipeline.max(1);
    let flow = Flow::new();
    let last_labels = Arc::new(LastLabels::default());
    let mut running = FuturesOrdered::new();
    let mut first = true;
    let requests = FrameSampler::new();
    let mut read = 0u64;
    let ending = loop {
        let reading = async {
            let next = async {
                match input.next().await {
                    None => Ok(None),
                    Some(Err(status)) => Err(remap_incoming(status, limits.max_message_bytes)),
                    Some(Ok(request)) => Ok(Some(request)),
                }
            };
            match first {
                true => {
                    timeouts
                        .first(METHOD_STREAM, "first ModelInferRequest", next)
                        .await
                }
                false => timeouts.next(METHOD_STREAM, next).await,
            }
        };
        let event = tokio::select! {
            // The end first; then answers, in order, before more reading.
            biased;
            _ = sleep_until(ends_at) => Event::End(lifetime_over(limits)),
            _ = shutdown.wait_for(|down| *down) => Event::End(shutting_down()),
            stalled = out.stalled() => Event::End(stalled),
            _ = out.closed() => Event::End(client_gone()),
            Some(response) = running.next(), if !running.is_empty() => Event::Answered(response),
            message = reading, if running.len() < pipeline => Event::Read(message),
        };
        match event {
            Event::Answered(response) => {
                if !out.send(response).await {
                    break Some(out.stall().unwrap_or_else(client_gone));
                }
            }
            Event::Read(Err(status)) | Event::End(status) => break Some(status),
            Event::Read(Ok(None)) => break None,
            Event::Read(Ok(Some(request))) => {
                if first {
                    model.set(models::label(lifecycle, &request.model_name));
                    first = false;
                }
                let (id, name) = (request.id.clone(), request.model_name.clone());
                let work = answer(
                    Arc::clone(lifecycle),
                    request,
                    flow,
                    Arc::clone(&last_labels),
                );
                let span = requests.next("request", read);
                read += 1;
                running.push_back(Running {
                    task: tokio::spawn(tracing::Instrument::instrument(work, span)),
                    id,
                    name,
                });
            }
        }
    };
    // A client that is gone or does not read gets nothing more: the requests running are
    // dropped with `running`. Otherwise those already read are answered before the stream ends
    // (each send still has an end).
    if out.stall().is_none() && !out.is_closed() {
        while let Some(response) = running.next().await {
            if !out.send(response).await {
                break;
            }
        }
    }
    match ending {
        Some(status) => Err(status),
        None => Ok(()),
    }
}

/// A request running on its own task, aborted when dropped (the stream ended without it).
struct Running {
    task: JoinHandle<Response>,
    /// The request's id and model name, for an answer if its task fails.
    id: String,
    name: String,
}

impl Future for Running {
    type Output = Response;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Response> {
        let joined = std::task::ready!(Pin::new(&mut self.task).poll(cx));
        Poll::Ready(joined.unwrap_or_else(|e| {
            tracing::error!(id = self.id, "an inference stream's request failed: {e}");
            failed(
                &self.id,
                &self.name,
                "internal error: the request failed".into(),
            )
        }))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request's response: its outputs, or its error in `error_message` with its id.
async fn answer(
    lifecycle: Arc<Lifecycle>,
    request: pb::ModelInferRequest,
    flow: Flow,
    last_labels: Arc<LastLabels>,
) -> Response {
    let (id, name) = (request.id.clone(), request.model_name.clone());
    let deadline = lifecycle
        .limits
        .request_timeout
        .and_then(|d| Instant::now().checked_add(d));
    let work = async {
        let (served, kind) =
            models::resolve(&lifecycle, &request.model_name, &request.model_version)?;
        let context = Context {
            flow,
            deadline,
            last_labels: Some(&last_labels),
            max_answer_bytes: lifecycle.limits.max_message_bytes,
        };
        super::infer::infer(served, kind, request, context)
            .await
            .map_err(Status::from)
    };
    match convert::with_deadline(deadline, work).await {
        Ok(response) => Response {
            error_message: String::new(),
            infer_response: Some(response),
        },
        Err(status) => failed(&id, &name, status.message().to_string()),
    }
}

/// The answer to a request that failed: its error, with its id and model name.
fn failed(id: &str, name: &str, error_message: String) -> Response {
    Response {
        error_message,
        infer_response: Some(pb::ModelInferResponse {
            model_name: name.into(),
            model_version: models::VERSION.into(),
            id: id.into(),
            ..Default::default()
        }),
    }
}
