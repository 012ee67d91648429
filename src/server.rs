//! `siglip-serve serve`: the composition root. It builds the pieces — the metrics endpoint, the
//! gRPC server, the budgets every model shares and the repository of models — and runs the
//! server's life: listen at once (NOT_SERVING), load and warm the models in the background,
//! serve (health following each model's device), and on SIGTERM/SIGINT drain, stop and unload —
//! or, when a model's inference keeps failing past `--exit-after-failures`, drain, stop and exit
//! non-zero.

use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::ServeArgs;
use crate::grpc::{transport::Security, GrpcServer};
use crate::infer::Shared;
use crate::metrics;
use crate::repository::Repository;

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
    // The models are listed (as loading) before anyone can know the port: a call from then on
    // to a model still loading is answered UNAVAILABLE with a retry hint, not NOT_FOUND.
    let (models, mut exits) =
        Repository::open(args.repository(), Shared::new(args.infer_config()))?;
    grpc.serve(std::sync::Arc::clone(&models));
    // Listen for signals before anyone can know the port: a SIGTERM sent as soon as the line
    // below appears must start a clean shutdown, not kill the process (the default action).
    let shutdown = shutdown_signal().context("cannot listen for SIGTERM and SIGINT")?;
    tokio::pin!(shutdown);
    // Tests and tools read these lines to find ephemeral ports.
    println!("siglip-serve: metrics listening on {metrics_addr}");
    println!("siglip-serve: gRPC listening on {addr}");
    tracing::info!(
        %addr,
        %mode,
        max_image_bytes = args.limits.max_image_bytes,
        max_image_pixels = args.limits.max_image_pixels,
        max_texts = args.limits.max_texts,
        max_streams = args.limits.max_streams,
        "gRPC listening ({mode}); loading the models (health: NOT_SERVING)"
    );

    let mut failed = None;
    tokio::select! {
        started = models.start() => {
            match started {
                Ok(()) => {
                    // Until a model's device fails for good, or the signal.
                    tokio::select! {
                        exit = exits.recv() => failed = exit,
                        _ = &mut shutdown => {}
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        _ = &mut shutdown => {}
    }

    tracing::info!(
        grace_s = args.shutdown_grace_seconds,
        cause = if failed.is_some() {
            "inference keeps failing, or a model did not load"
        } else {
            "signal"
        },
        "shutting down: NOT_SERVING, draining"
    );
    // Consumes the gRPC server, and with it the last handles to the models' cores.
    grpc.drain(Duration::from_secs(args.shutdown_grace_seconds))
        .await?;
    // Each model's inference thread drops its model once the last handle to its queue is gone (a
    // stream finishing its last frame may still hold one); dropping an AOTInductor package's
    // loader deletes the copy it unpacked under /tmp: `main` leaves with `_exit`, which runs no
    // destructors, so this is the only place that happens.
    models.unload_all(Duration::from_secs(3)).await;
    match failed {
        // `main` logs it and exits with status 1.
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
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
