//! The `siglip-serve` command line.

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use siglip_serve::{
    config::{ModelArgs, ServeArgs},
    error::{Error, Result},
    model::{
        device::{device_name, DeviceChoice},
        image::{self, ImageLimits},
        scores::{rank, ScoreFilter},
        Model,
    },
    tools::{
        bench::{self, BenchArgs},
        client::ClientArgs,
        parity,
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
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        /// Image files (JPEG, PNG, WebP, GIF, BMP, TIFF).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Text labels, e.g. "a photo of 2 cats".
        #[arg(long, num_args = 1.., required = true)]
        labels: Vec<String>,
    },
    /// Run the gRPC server.
    Serve(Box<ServeArgs>),
    /// Load a running server over gRPC (and the model alone) and print throughput and latency.
    Bench(Box<BenchArgs>),
    /// Legitimate traffic of every kind with abuse mixed in, against a running server, for
    /// minutes; the last line sums it up (errors that should not have happened, memory, p99).
    Soak(Box<SoakArgs>),
    /// Ask a server's gRPC health service; exit 0 when it is SERVING (for container health checks).
    Health {
        /// The server (https:// for TLS, with --tls-ca).
        #[arg(
            long,
            env = "SIGLIP_HEALTH_ADDR",
            default_value = "http://127.0.0.1:50051"
        )]
        addr: String,
        /// "" for the whole server, or "siglip.v1.Siglip".
        #[arg(long, default_value = "")]
        service: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Compare preprocessing, tokenizer and model against transformers' reference outputs.
    Parity {
        /// Suite file listing the references (see `make parity`).
        #[arg(long)]
        suite: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: DeviceChoice,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Bench(args) => return bench(*args),
        Command::Soak(args) => return run_soak(*args),
        Command::Health {
            addr,
            service,
            client,
        } => return health(&addr, service, &client),
        Command::Classify {
            model,
            images,
            labels,
        } => classify(&model, &images, &labels),
        Command::Parity { suite, device } => parity::run(&suite, device).map(|report| {
            print!("{}", report.table());
            println!("{}", report.summary());
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn classify(args: &ModelArgs, files: &[PathBuf], labels: &[String]) -> Result<()> {
    let model = Model::load(&args.load_options(files.len().max(1)))?;
    let manifest = model.manifest();
    println!(
        "model {} ({}, {}px) on {} in {}",
        manifest.model_id,
        manifest.architecture,
        manifest.image.size,
        device_name(model.device()),
        model.dtype()
    );
    if manifest.source.random_weights {
        eprintln!(
            "WARNING: {} has RANDOM weights (no checkpoint could be downloaded): the pipeline is \
             real, the probabilities below are MEANINGLESS. Export a real checkpoint for real answers.",
            manifest.model_id
        );
    }
    let tokens = model.tokenize(labels)?;
    for (label, t) in labels.iter().zip(&tokens) {
        if t.truncated {
            eprintln!(
                "note: label {label:?} is longer than {} tokens and was truncated",
                t.ids.len()
            );
        }
    }
    let texts = model.embed_token_ids(&tokens)?;
    let limits = ImageLimits::default();
    let convention = args.image_convention;
    let mut failed = 0;
    for file in files {
        let decoded = std::fs::read(file)
            .map_err(|e| Error::InvalidArgument(format!("cannot read: {e}")))
            .and_then(|bytes| Ok(image::decode(&bytes, &limits, convention)?));
        let rgb = match decoded {
            Ok(rgb) => rgb,
            Err(e) => {
                eprintln!("{}: error: {e}", file.display());
                failed += 1;
                continue;
            }
        };
        let embedding = model.embed_images(std::slice::from_ref(&rgb))?;
        let scores = rank(
            model.head(),
            embedding.row(0),
            labels,
            &texts,
            ScoreFilter::default(),
        );
        println!("\n{} ({}x{})", file.display(), rgb.width(), rgb.height());
        for s in scores {
            println!(
                "  {:>7.2}%  logit {:>8.3}  {}",
                100.0 * s.probability,
                s.logit,
                s.label
            );
        }
    }
    if failed > 0 {
        return Err(Error::InvalidArgument(format!(
            "{failed} of {} images could not be classified",
            files.len()
        )));
    }
    Ok(())
}

fn serve(args: ServeArgs) -> ! {
    init_logging(args.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(siglip_serve::server::run(args));
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

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(bench::run(args)));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exits non-zero when an unexpected error happened, so that `make soak` fails.
fn run_soak(args: SoakArgs) -> ExitCode {
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(soak::run(args)));
    match result {
        Ok(report) => {
            println!("{report}");
            if report.errors_unexpected == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn health(addr: &str, service: String, client: &ClientArgs) -> ExitCode {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let check = async {
        let channel = client.connect(addr).await?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest { service })
            .await?;
        anyhow::Ok(response.into_inner().status())
    };
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(check));
    match result {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("{}", status.as_str_name());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
