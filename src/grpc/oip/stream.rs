//! ModelStreamInfer: requests in, one response each, in order.
//!
//! Up to `--stream-pipeline` requests run at once (a full pipeline stops the reading, so the
//! client feels backpressure). A request that fails is answered in `error_message`, with its id,
//! and the stream goes on, as Triton does; the stream itself ends only as a siglip.v1 stream
//! does: at its maximum lifetime or at shutdown (UNAVAILABLE, after the requests already read
//! are answered), for a client that goes silent or stops reading (DEADLINE_EXCEEDED), or for a
//! message that cannot be read. It takes a stream slot (`--max-streams`) and is one flow of the
//! fair queue, and the label set it sent last is embedded once.

use std::{sync::Arc, time::Duration, time::Instant};

use ::metrics::gauge;
use futures_util::stream::{FuturesOrdered, StreamExt as _};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Status, Streaming};

use super::infer::{Context, LastLabels};
use super::{models, pb, METHOD_STREAM};
use crate::grpc::api::{
    convert,
    status::remap_incoming,
    stream::{
        lifetime_over,
        outbox::{Outbox, Output},
        shutting_down, sleep_until,
    },
    Lifecycle,
};
use crate::grpc::calls::{client_gone, record, record_ok, CallModel};
use crate::infer::Flow;
use crate::metrics;

type Response = pb::ModelStreamInferResponse;

/// Starts the stream's task; the returned stream yields its responses, then the status it ended
/// with. Everything the stream holds is freed when it ends or the client goes away.
pub(super) fn run(
    lifecycle: Arc<Lifecycle>,
    input: Streaming<pb::ModelInferRequest>,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Output<Response>> {
    let limits = &lifecycle.limits;
    let (tx, rx) = mpsc::channel(limits.stream_pipeline.max(1));
    let ends_at = (limits.max_stream_seconds > 0)
        .then(|| tokio::time::Instant::now() + Duration::from_secs(limits.max_stream_seconds));
    let out = Outbox::new(tx, limits.idle_timeout, ends_at);
    let (last, last_rx) = oneshot::channel::<Status>();
    tokio::spawn(async move {
        let started = Instant::now();
        gauge!(metrics::ACTIVE_STREAMS).increment(1.0);
        let model = CallModel::default();
        let result = drive(&lifecycle, &model, input, out.clone(), ends_at).await;
        gauge!(metrics::ACTIVE_STREAMS).decrement(1.0);
        match &result {
            Ok(()) => record_ok(METHOD_STREAM, model.get(), started),
            Err(status) => record(METHOD_STREAM, model.get(), status, started),
        }
        // As in siglip.v1 streams: the slot is free before the client hears the stream is over.
        drop(permit);
        if let Err(status) = result {
            let _ = last.send(status);
        }
        drop(out);
    });
    let last = futures_util::StreamExt::filter_map(futures_util::stream::once(last_rx), |r| {
        std::future::ready(r.ok().map(Err))
    });
    futures_util::StreamExt::chain(ReceiverStream::new(rx), last)
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
                true => timeouts.first(METHOD_STREAM, next).await,
                false => timeouts.next(METHOD_STREAM, next).await,
            }
        };
        let event = tokio::select! {
            // Answers first, in order: a finished request's response is not held back by reading.
            Some(response) = running.next(), if !running.is_empty() => Event::Answered(response),
            message = reading, if running.len() < pipeline => Event::Read(message),
            _ = sleep_until(ends_at) => Event::End(lifetime_over(limits)),
            _ = shutdown.wait_for(|down| *down) => Event::End(shutting_down()),
            stalled = out.stalled() => Event::End(stalled),
            _ = out.closed() => Event::End(client_gone()),
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
                running.push_back(answer(
                    Arc::clone(lifecycle),
                    request,
                    flow,
                    Arc::clone(&last_labels),
                ));
            }
        }
    };
    // The requests already read are answered before the stream ends (each send still has an
    // end, and a stalled or departed client ends it at once).
    while let Some(response) = running.next().await {
        if out.stall().is_some() || !out.send(response).await {
            break;
        }
    }
    match ending {
        Some(status) => Err(status),
        None => Ok(()),
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
        Err(status) => Response {
            error_message: status.message().to_string(),
            infer_response: Some(pb::ModelInferResponse {
                model_name: name,
                model_version: models::VERSION.into(),
                id,
                ..Default::default()
            }),
        },
    }
}
