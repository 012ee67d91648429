//! The `siglip-serve` command line: parses it and dispatches to the server (`serve`) or to a
//! tool (`siglip_serve::tools`). Every subcommand ends the same way: an error is printed as
//! `error: …` and exits 1.

use std::{future::Future, process::ExitCode};

use clap::{Parser, Subcommand};
use siglip_serve::{
    config::ServeArgs,
    telemetry,
    tools::{
        bench::{self, BenchArgs},
        classify::{self, ClassifyArgs},
        health::{self, HealthArgs},
        parity::{self, ParityArgs},
        soak::{self, SoakArgs},
    },
};

#[derive(Parser)]
#[command(
    version,
    about = "gRPC inference server for SigLIP zero-shot image classification"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Classify local image files against text labels and print each label's probability.
    Classify(ClassifyArgs),
    /// Run the gRPC server.
    Serve(Box<ServeArgs>),
    /// Load a running server over gRPC (and the model alone) and print throughput and latency.
    Bench(Box<BenchArgs>),
    /// Legitimate traffic of every kind with abuse mixed in, against a running server, for
    /// minutes; the last line sums it up (errors that should not have happened, memory, p99).
    Soak(Box<SoakArgs>),
    /// Ask a server's gRPC health service; exit 0 when it is SERVING (for container health checks).
    Health(HealthArgs),
    /// Compare preprocessing, tokenizer and model against transformers' reference outputs.
    Parity(ParityArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(*args),
        Command::Classify(args) => block_on(classify::run(args), |()| ExitCode::SUCCESS),
        Command::Bench(args) => block_on(bench::run(*args), |_report| ExitCode::SUCCESS),
        // Non-zero on an unexpected error, so that `make soak` fails.
        Command::Soak(args) => block_on(soak::run(*args), |report| {
            success_if(report.errors_unexpected == 0)
        }),
        Command::Health(args) => block_on(health::run(args), success_if),
        Command::Parity(args) => exit(parity::command(&args).map(|()| ExitCode::SUCCESS)),
    }
}

/// Runs a tool's async entry point on a runtime of its own; `done` turns what it returns into
/// the exit code.
fn block_on<T>(
    entry: impl Future<Output = anyhow::Result<T>>,
    done: impl FnOnce(T) -> ExitCode,
) -> ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(entry));
    exit(result.map(done))
}

/// The exit code of a subcommand's outcome: an error is printed and exits 1.
fn exit(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn success_if(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn serve(args: ServeArgs) -> ! {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = args.check() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    // On the runtime: the OTLP exporter's connection lives there.
    let telemetry =
        match runtime.block_on(async { telemetry::init(args.tracing.export(), args.log_json) }) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("error: {e:#}");
                std::process::exit(1);
            }
        };
    let result = runtime.block_on(siglip_serve::server::run(args));
    // While the runtime still runs the exporter's connection.
    telemetry.shutdown();
    // `serve` has drained what it will wait for. Dropping the runtime would wait for every
    // blocking task, a model still loading and warming up (minutes) included: abandon them.
    runtime.shutdown_background();
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    };
    // An abandoned load may still be running libtorch on a blocking thread. A normal exit runs
    // libtorch's static destructors under it and segfaults now and then (seen in CI), so leave
    // without them. A loaded model was already unloaded by `serve` (what its destructors had to
    // do is done); stderr is unbuffered and nothing else is left to flush.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    // SAFETY: `_exit` ends the process at once; no Rust state is used after it.
    unsafe { libc::_exit(code) }
}
