//! The bidirectional `Stream` call: a configuration first (labels, delivery mode, and
//! optionally frame policy, smoothing, events and regions, checked by [`settings`]), then frames.
//!
//! - `assembler`: frames whole or in chunks; `max_fps` applied before any decoding;
//! - `frame`: a frame, the config it arrived under, and what became of it;
//! - `delivery`: every frame in a bounded pipeline, answered in order (a full pipeline stops
//!   the reading, so the client feels backpressure), or latest only (one slot for the newest
//!   frame; one that arrives while it waits supersedes it);
//! - `report`: outcomes into messages, in frame order; `outbox`: every send has an end.
//!
//! The labels are embedded once per config, by the model the config names, and a new config
//! replaces the whole setup (the model too: that is how a stream moves to another model, or to a
//! model's new version after a hot swap); frames already read keep the config, and the model
//! version, they arrived under. A bad frame gets an in-band error; a protocol
//! violation ends the stream with INVALID_ARGUMENT. The stream ends with UNAVAILABLE
//! ("reconnect") at its maximum lifetime or at shutdown, after the frames already read are
//! answered; a silent client or one that stops reading ends it with DEADLINE_EXCEEDED.

mod assembler;
mod delivery;
mod frame;
pub(in crate::grpc) mod outbox;
mod report;
pub mod settings;

use std::{future::Future, sync::Arc, time::Duration, time::Instant};

use ::metrics::gauge;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Status, Streaming};

use super::{convert, lifecycle::Lifecycle, pb, status::remap_incoming, CallLimits};
use crate::grpc::calls::{client_gone, record, record_ok, CallModel};
use crate::infer::Flow;
use crate::metrics;
use crate::stream::drops::DropReason;
use assembler::{Arrival, Assembler};
use delivery::Sink;
use frame::ActiveConfig;
use outbox::{Outbox, Output};

/// The call's name in protocol errors.
const PROTOCOL: &str = "Stream";

/// Starts the stream's tasks; the returned stream yields its responses, then the status it
/// ended with. Everything the stream holds is freed when it ends or the client goes away.
pub(super) fn run(
    lifecycle: Arc<Lifecycle>,
    input: Streaming<pb::StreamRequest>,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Output<pb::StreamResponse>> {
    let limits = lifecycle.limits.clone();
    spawn(
        &limits,
        PROTOCOL,
        permit,
        move |model, out, ends_at| async move { drive(&lifecycle, &model, input, out, ends_at).await },
    )
}

/// Runs a bidirectional call of either API on a task of its own: `drive` reads the client's
/// messages and sends its answers through the [`Outbox`] until the call's lifetime
/// (`--max-stream-seconds`) ends; it notes the call's model for the metrics. The call is counted
/// under `method` when it ends, and `permit` (its `--max-streams` slot) is freed before the
/// client hears that it is over, so that a client that reconnects on that news finds it free.
/// The returned stream yields the answers, then the status the call ended with.
pub(in crate::grpc) fn spawn<T, F, Fut>(
    limits: &CallLimits,
    method: &'static str,
    permit: OwnedSemaphorePermit,
    drive: F,
) -> impl Stream<Item = Output<T>>
where
    T: Send + 'static,
    F: FnOnce(Arc<CallModel>, Outbox<T>, Option<tokio::time::Instant>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(limits.stream_pipeline.max(1));
    let lifetime =
        (limits.max_stream_seconds > 0).then(|| Duration::from_secs(limits.max_stream_seconds));
    let ends_at = lifetime.map(|d| tokio::time::Instant::now() + d);
    let out = Outbox::new(tx, limits.idle_timeout, ends_at);
    // The final status comes after the results, but needs no room among them: a client that
    // does not read must not keep the call's task (and slot) waiting to tell it so.
    let (last, last_rx) = oneshot::channel::<Status>();
    // The call's span (when traced) lasts as long as the call, not the handler that opened it.
    let span = tracing::Span::current();
    let call = async move {
        let started = Instant::now();
        gauge!(metrics::ACTIVE_STREAMS).increment(1.0);
        let model = Arc::new(CallModel::default());
        let result = drive(Arc::clone(&model), out.clone(), ends_at).await;
        gauge!(metrics::ACTIVE_STREAMS).decrement(1.0);
        match &result {
            Ok(()) => record_ok(method, model.get(), started),
            Err(status) => record(method, model.get(), status, started),
        }
        // The end of the response needs both `last` and `out` gone.
        drop(permit);
        if let Err(status) = result {
            let _ = last.send(status);
        }
        drop(out);
    };
    tokio::spawn(tracing::Instrument::instrument(call, span));
    let last = futures_util::StreamExt::filter_map(futures_util::stream::once(last_rx), |r| {
        std::future::ready(r.ok().map(Err))
    });
    futures_util::StreamExt::chain(ReceiverStream::new(rx), last)
}

/// `model`: the model of the stream's first config, for the call's metrics.
async fn drive(
    lifecycle: &Lifecycle,
    model: &CallModel,
    mut input: Streaming<pb::StreamRequest>,
    out: Outbox<pb::StreamResponse>,
    ends_at: Option<tokio::time::Instant>,
) -> Result<(), Status> {
    let limits = &lifecycle.limits;
    let timeouts = lifecycle.timeouts();
    let mut shutdown = lifecycle.shutdown_signal();
    let first = tokio::select! {
        first = timeouts.first(PROTOCOL, "StreamConfig", next_message(&mut input, limits.max_message_bytes)) => first?,
        _ = shutdown.wait_for(|down| *down) => return Err(shutting_down()),
    };
    let first = match first {
        Some(pb::stream_request::Msg::Config(c)) => c,
        Some(pb::stream_request::Msg::Frame(_)) => {
            return Err(Status::invalid_argument(
                "Stream protocol: the first message must be a StreamConfig (labels and mode), got a frame",
            ))
        }
        None => return Ok(()),
    };
    let mode = match pb::DeliveryMode::try_from(first.mode) {
        Ok(pb::DeliveryMode::LatestOnly) => pb::DeliveryMode::LatestOnly,
        Ok(_) => pb::DeliveryMode::EveryFrame,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown delivery mode {}",
                first.mode
            )))
        }
    };
    model.set(lifecycle.label(&first.model));
    let mut active = Arc::new(
        before_the_end(
            configure(lifecycle, first, 0),
            ends_at,
            &mut shutdown,
            limits,
        )
        .await?,
    );
    let flow = Flow::new();
    let sink = match mode {
        pb::DeliveryMode::LatestOnly => Sink::latest(flow, out.clone()),
        _ => Sink::ordered(flow, out.clone(), limits.stream_pipeline.max(1)),
    };
    let mut assembler = Assembler::new(
        active.served.infer.limits().image.max_bytes,
        Arc::clone(&lifecycle.reassembly),
        &active,
    );

    let ending = loop {
        let msg = tokio::select! {
            msg = timeouts.next(PROTOCOL, next_message(&mut input, limits.max_message_bytes)) => msg,
            _ = sleep_until(ends_at) => break Some(lifetime_over(limits)),
            _ = shutdown.wait_for(|down| *down) => break Some(shutting_down()),
            stalled = out.stalled() => break Some(stalled),
            _ = out.closed() => break Some(client_gone()),
        };
        match msg {
            Err(status) => break Some(status),
            Ok(None) => break assembler.incomplete(),
            Ok(Some(pb::stream_request::Msg::Config(config))) => {
                if config.mode != 0 && config.mode != mode as i32 {
                    break Some(Status::invalid_argument(
                        "Stream protocol: the delivery mode cannot change mid-stream; open a new stream",
                    ));
                }
                let next = configure(lifecycle, config, active.generation + 1);
                match before_the_end(next, ends_at, &mut shutdown, limits).await {
                    Ok(next) => {
                        active = Arc::new(next);
                        assembler.reconfigure(&active);
                    }
                    Err(status) => break Some(status),
                }
            }
            Ok(Some(pb::stream_request::Msg::Frame(frame))) => {
                let delivered = match assembler.push(frame, &active) {
                    Ok(Some(Arrival::Ready(ready))) => sink.submit(ready).await,
                    Ok(Some(Arrival::Skipped(meta))) => sink.skip(meta, DropReason::Rate).await,
                    Ok(None) => true,
                    Err(status) => break Some(status),
                };
                if !delivered {
                    break Some(out.stall().unwrap_or_else(client_gone));
                }
            }
        }
    };
    // Answer what was read before ending (sends still have an end), then close with the reason.
    sink.finish().await;
    match ending {
        Some(status) => Err(status),
        None => Ok(()),
    }
}

/// `work`, unless the stream's lifetime or the server's shutdown comes first. A label set is
/// embedded for as long as the text tower takes (seconds for hundreds of labels on a CPU), and
/// neither may wait for that: the stream and its slot end on time, and the labels' jobs still
/// queued, whose caller is gone, are dropped unrun.
async fn before_the_end<T>(
    work: impl Future<Output = Result<T, Status>>,
    ends_at: Option<tokio::time::Instant>,
    shutdown: &mut watch::Receiver<bool>,
    limits: &CallLimits,
) -> Result<T, Status> {
    tokio::select! {
        done = work => done,
        _ = sleep_until(ends_at) => Err(lifetime_over(limits)),
        _ = shutdown.wait_for(|down| *down) => Err(shutting_down()),
    }
}

pub(in crate::grpc) fn lifetime_over(limits: &CallLimits) -> Status {
    Status::unavailable(format!(
        "stream reached its maximum lifetime of {}s (--max-stream-seconds): reconnect to continue",
        limits.max_stream_seconds
    ))
}

pub(in crate::grpc) fn shutting_down() -> Status {
    Status::unavailable("server is shutting down: reconnect to continue on another replica")
}

pub(in crate::grpc) async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_message(
    input: &mut Streaming<pb::StreamRequest>,
    max_message_bytes: usize,
) -> Result<Option<pb::stream_request::Msg>, Status> {
    match input.next().await {
        None => Ok(None),
        Some(Err(status)) => Err(remap_incoming(status, max_message_bytes)),
        Some(Ok(req)) => req
            .msg
            .map(Some)
            .ok_or_else(|| Status::invalid_argument("empty StreamRequest: set config or frame")),
    }
}

/// Checks a configuration and embeds its labels with the model it names (its version serving
/// now); a bad config ends the stream (it is the client's setup, not one frame, that is wrong).
async fn configure(
    lifecycle: &Lifecycle,
    config: pb::StreamConfig,
    generation: u32,
) -> Result<ActiveConfig, Status> {
    let served = lifecycle.model(&config.model)?;
    let checked = settings::from_config(&config, served.infer.limits().max_regions)?;
    let max_patches = convert::options_patches(config.options);
    let preprocess = served.infer.preprocessing(max_patches)?;
    let (labels, _) = served.infer.labels(config.texts, None).await?;
    Ok(ActiveConfig {
        served,
        labels,
        settings: checked,
        preprocess,
        generation,
    })
}
