//! `siglip-serve serve`: the composition root. It builds the pieces — the metrics endpoint, the
//! gRPC server, the model, the inference queue in front of it and the core over both — and
//! runs the server's life: listen at once (NOT_SERVING), load and warm the model in the
//! background, serve (health following the device), and on SIGTERM/SIGINT drain, stop and
//! unload — or, when inference keeps failing past `--exit-after-failures`, drain, stop and exit
//! non-zero.

use std::{sync::Arc, thread::JoinHandle, time::Duration};

use ::metrics::gauge;
use anyhow::Context;
use tokio::{net::TcpListener, sync::watch};

use crate::batch::{BatchConfig, Batcher};
use crate::config::ServeArgs;
use crate::error::{Error, Result};
use crate::grpc::{transport::Security, GrpcServer};
use crate::health;
use crate::infer::Infer;
use crate::metrics;
use crate::model::{HostSide, Model, RunningOn};

/// Runs the server until SIGTERM/SIGINT, then drains and returns.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.check()?;
    let metrics_handle = metrics::install()?;
    let metrics_listener = metrics::bind(args.metrics_addr).await?;
    let metrics_addr = metrics_listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(metrics_listener, metrics_handle).await {
            tracing::error!("{e:#}");
        }
    });
    // Before listening: TLS material or a token file that does not load stops the start.
    let security = Security::load(args.security.files())?;
    let mode = security.mode();
    let listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc_addr))?;
    let addr = listener.local_addr()?;
    let mut grpc = GrpcServer::start(
        listener,
        args.limits.call_limits(),
        args.connection.connection(),
        security,
    )
    .await?;
    // Listen for signals before anyone can know the port: a SIGTERM sent as soon as the line
    // below appears must start a clean shutdown, not kill the process (the default action).
    let shutdown = shutdown_signal().context("cannot listen for SIGTERM and SIGINT")?;
    tokio::pin!(shutdown);
    // Tests and tools read these lines to find ephemeral ports.
    println!("siglip-serve: metrics listening on {metrics_addr}");
    println!("siglip-serve: gRPC listening on {addr}");
    tracing::info!(%addr, %mode, "gRPC listening ({mode}); loading the model (health: NOT_SERVING)");

    let load = tokio::task::spawn_blocking({
        let args = args.clone();
        move || load(&args)
    });
    let mut worker = None;
    let mut failed = None;
    tokio::select! {
        loaded = load => {
            let (infer, on, thread, failures) = loaded.context("model loading panicked")??;
            worker = Some(thread);
            let m = infer.manifest();
            metrics::set_model_info(&m.model_id, &m.architecture, &on.device, on.dtype.name(), m.source.random_weights);
            if let Some(index) = on.device.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                metrics::watch_cuda_memory(index);
            }
            // Which Python code the answers match, for whoever compares them with their own.
            let (model, convention, processor) = (m.model_id.clone(), infer.convention(), infer.processor());
            grpc.serving(infer, on).await;
            gauge!(metrics::READY).set(1.0);
            tracing::info!(%model, image_convention = %convention, image_processor = %processor, "model ready (health: SERVING)");
            let device = health::follow(failures, args.health.policy(), async |serving| {
                grpc.set_serving(serving).await
            });
            // Following ends here, before the drain: it must not turn a draining server SERVING.
            tokio::select! {
                exit = device => failed = Some(exit),
                _ = &mut shutdown => {}
            }
        }
        _ = &mut shutdown => {}
    }

    tracing::info!(
        grace_s = args.shutdown_grace_seconds,
        cause = if failed.is_some() {
            "inference keeps failing"
        } else {
            "signal"
        },
        "shutting down: NOT_SERVING, draining"
    );
    gauge!(metrics::READY).set(0.0);
    // Consumes the gRPC server, and with it the last handles to the core and its queue.
    grpc.drain(Duration::from_secs(args.shutdown_grace_seconds))
        .await?;
    if let Some(worker) = worker {
        unload(worker).await;
    }
    match failed {
        // `main` logs it and exits with status 1.
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// What [`load`] starts: the core, where it runs, the inference thread and its count of
/// consecutive failures.
type Loaded = (Arc<Infer>, RunningOn, JoinHandle<()>, watch::Receiver<u32>);

/// Starts the inference worker, which loads and warms the model, and builds the core in front of
/// it (blocking).
fn load(args: &ServeArgs) -> anyhow::Result<Loaded> {
    let options = args.model.load_options(args.batch.max_batch_size.max(1));
    let setup_args = args.clone();
    let (batcher, (host, on), worker) = Batcher::load(
        move || Model::load(&options),
        move |model| setup(&setup_args, model),
    )
    .context("loading the model")?;
    let failures = batcher.consecutive_failures();
    let infer = Infer::new(batcher, host, args.infer_config());
    Ok((Arc::new(infer), on, worker, failures))
}

/// Checks a loaded model against the flags and logs it; its batching, host side and where it runs.
fn setup(args: &ServeArgs, model: &Model) -> Result<(BatchConfig, (HostSide, RunningOn))> {
    if let Some(max) = model
        .max_batch()
        .filter(|&max| args.batch.max_batch_size > max)
    {
        return Err(Error::Model(format!(
            "--max-batch-size {} is more than the compiled vision tower accepts ({max}): lower it, \
             or compile again with `python -m siglip_export compile --max-batch {}`",
            args.batch.max_batch_size, args.batch.max_batch_size
        )));
    }
    let host = model.host_side();
    let on = model.running_on();
    let manifest = &host.manifest;
    tracing::info!(
        model = %manifest.model_id,
        random_weights = manifest.source.random_weights,
        max_image_bytes = args.limits.max_image_bytes,
        max_image_pixels = args.limits.max_image_pixels,
        max_texts = args.limits.max_texts,
        max_streams = args.limits.max_streams,
        architecture = %manifest.architecture,
        image_size = manifest.image.size,
        device = %on.device,
        dtype = %on.dtype,
        backend = on.backend,
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
    Ok((args.batching(model.runs_asynchronously()), (host, on)))
}

/// Waits (briefly) for the inference thread to drop the model. It does so once the last handle
/// to its queue is gone (a stream finishing its last frame may still hold one), and dropping
/// an AOTInductor package's loader deletes the copy it unpacked under /tmp: `main` leaves
/// with `_exit`, which runs no destructors, so this is the only place that happens.
async fn unload(worker: JoinHandle<()>) {
    const WAIT: Duration = Duration::from_secs(3);
    let joined = tokio::task::spawn_blocking(move || worker.join());
    if tokio::time::timeout(WAIT, joined).await.is_err() {
        tracing::warn!(
            "the model was still in use {WAIT:?} after draining; exiting without unloading it \
             (a compiled package's unpacked copy under /tmp stays behind)"
        );
    }
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
