//! The gRPC server: the `siglip.v1.Siglip` service, `grpc.health.v1` and server reflection,
//! with the model loaded in the background and a graceful shutdown.

mod convert;
mod service;
mod status;
mod stream;

use std::{sync::Arc, time::Duration};

use ::metrics::gauge;
use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

use crate::batch::Batcher;
use crate::config::ServeArgs;
use crate::infer::Infer;
use crate::metrics;
use crate::model::{device::device_name, Model};
pub use service::{RunningOn, State};

/// Generated from `proto/siglip/v1/siglip.proto`.
pub mod pb {
    tonic::include_proto!("siglip.v1");

    /// For server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("siglip_descriptor");
}

/// What the gRPC layer allows one caller.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message accepted, in bytes (bigger images go through Upload in chunks).
    pub max_message_bytes: usize,
    /// Concurrent Stream calls.
    pub max_streams: usize,
    /// Longest a Stream call may last, in seconds (0: no limit).
    pub max_stream_seconds: u64,
    /// Frames of one every-frame stream in flight at once.
    pub stream_pipeline: usize,
}

/// The health-service names this server reports: overall (`""`) and the API itself.
const SERVICE_NAME: &str = "siglip.v1.Siglip";

/// Runs the server until SIGTERM/SIGINT, then drains and returns.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.limits.check()?;
    let metrics_handle = metrics::install()?;
    let metrics_listener = metrics::bind(args.metrics_addr).await?;
    let metrics_addr = metrics_listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(metrics_listener, metrics_handle).await {
            tracing::error!("{e:#}");
        }
    });
    let listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc_addr))?;
    let addr = listener.local_addr()?;

    let (mut health, health_service) = tonic_health::server::health_reporter();
    for name in ["", SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let state = Arc::new(State::new(args.limits.transport()));
    let max_message = args.limits.max_message_bytes;
    let api = pb::siglip_server::SiglipServer::new(service::SiglipService::new(Arc::clone(&state)))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(usize::MAX);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(move |r| {
            status::remap_response(r, max_message)
        }))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    let server = tokio::spawn(server);
    // Listen for signals before anyone can know the port: a SIGTERM sent as soon as the line
    // below appears must start a clean shutdown, not kill the process (the default action).
    let shutdown = shutdown_signal().context("cannot listen for SIGTERM and SIGINT")?;
    tokio::pin!(shutdown);
    // Tests and tools read these lines to find ephemeral ports.
    println!("siglip-serve: metrics listening on {metrics_addr}");
    println!("siglip-serve: gRPC listening on {addr}");
    tracing::info!(%addr, "gRPC listening; loading the model (health: NOT_SERVING)");

    let load = tokio::task::spawn_blocking({
        let args = args.clone();
        move || load(&args)
    });
    let mut worker = None;
    tokio::select! {
        loaded = load => {
            let (infer, on, thread) = loaded.context("model loading panicked")??;
            worker = Some(thread);
            let m = infer.manifest();
            metrics::set_model_info(&m.model_id, &m.architecture, &on.device, on.dtype.name(), m.source.random_weights);
            if let Some(index) = on.device.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                metrics::watch_cuda_memory(index);
            }
            state.set_ready(infer, on);
            gauge!(metrics::READY).set(1.0);
            // The whole server ("") last: whoever sees it SERVING finds the API SERVING too.
            for name in [SERVICE_NAME, ""] {
                health.set_service_status(name, ServingStatus::Serving).await;
            }
            tracing::info!("model ready (health: SERVING)");
            (&mut shutdown).await;
        }
        _ = &mut shutdown => {}
    }

    tracing::info!(
        grace_s = args.shutdown_grace_seconds,
        "shutting down: NOT_SERVING, draining"
    );
    for name in ["", SERVICE_NAME] {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
        // Then forget it: that ends its Watch streams (after their NOT_SERVING), which would
        // otherwise hold the drain open for the whole grace period. No new Check can come: the
        // server stops accepting calls just below.
        health.clear_service_status(name).await;
    }
    state.begin_shutdown();
    gauge!(metrics::READY).set(0.0);
    let _ = stop_tx.send(());
    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    match tokio::time::timeout(grace, server).await {
        Ok(result) => result.context("server task")?.context("gRPC server")?,
        Err(_) => tracing::warn!("in-flight work did not finish within {grace:?}; exiting anyway"),
    }
    drop(state);
    if let Some(worker) = worker {
        unload(worker).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Waits (briefly) for the inference thread to drop the model. It does so once the last handle
/// to its queue is gone (a stream finishing its last frame may still hold one), and dropping
/// an AOTInductor package's loader deletes the copy it unpacked under /tmp: `main` leaves
/// with `_exit`, which runs no destructors, so this is the only place that happens.
async fn unload(worker: std::thread::JoinHandle<()>) {
    const WAIT: Duration = Duration::from_secs(3);
    let joined = tokio::task::spawn_blocking(move || worker.join());
    if tokio::time::timeout(WAIT, joined).await.is_err() {
        tracing::warn!(
            "the model was still in use {WAIT:?} after draining; exiting without unloading it \
             (a compiled package's unpacked copy under /tmp stays behind)"
        );
    }
}

/// Loads and warms the model, then starts the inference worker in front of it (blocking).
fn load(args: &ServeArgs) -> anyhow::Result<(Arc<Infer>, RunningOn, std::thread::JoinHandle<()>)> {
    let model = Model::load(&args.model.load_options(args.batch.max_batch_size.max(1)))
        .context("loading the model")?;
    if let Some(max) = model
        .max_batch()
        .filter(|&max| args.batch.max_batch_size > max)
    {
        anyhow::bail!(
            "--max-batch-size {} is more than the compiled vision tower accepts ({max}): lower it, \
             or compile again with `python -m siglip_export compile --max-batch {}`",
            args.batch.max_batch_size,
            args.batch.max_batch_size
        );
    }
    let manifest = model.manifest().clone();
    let device = device_name(model.device());
    let dtype = model.dtype();
    let backend = model.backend();
    tracing::info!(
        model = %manifest.model_id,
        random_weights = manifest.source.random_weights,
        max_image_bytes = args.limits.max_image_bytes,
        max_image_pixels = args.limits.max_image_pixels,
        max_texts = args.limits.max_texts,
        max_streams = args.limits.max_streams,
        architecture = %manifest.architecture,
        image_size = manifest.image.size,
        %device,
        %dtype,
        backend,
        max_batch_size = args.batch.max_batch_size,
        max_queue = args.batch.max_queue,
        "model loaded and warmed up"
    );
    if manifest.source.random_weights {
        tracing::warn!(
            model = %manifest.model_id,
            "RANDOM WEIGHTS: this model was not trained; its probabilities are meaningless"
        );
    }
    let host = model.host_side();
    let batching = args.batching(model.runs_asynchronously());
    let (batcher, worker) = Batcher::start(model, batching);
    let infer = Infer::new(batcher, host, args.core());
    Ok((
        Arc::new(infer),
        RunningOn {
            device,
            dtype,
            backend,
        },
        worker,
    ))
}

/// Resolves at the first SIGTERM or SIGINT. The handlers are installed by this call, not when
/// the future is first polled, so no signal between the two is lost.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
