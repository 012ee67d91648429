//! Prometheus metrics: every name, unit and bucket layout in one place, registered at start-up
//! (so each series exists, at zero, before the first request) and served on `--metrics-addr`.
//!
//! Labels are bounded: gRPC method and code, tower, drop reason, and the caller's name (from the
//! operator's token file or CA, capped) — never a label text, a frame id, a token or a peer
//! address.

use std::{net::SocketAddr, time::Duration};

use ::metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

pub const GRPC_REQUESTS: &str = "siglip_grpc_requests_total";
pub const TRACE_SPANS_EXPORTED: &str = "siglip_trace_spans_exported_total";
pub const TRACE_SPANS_DROPPED: &str = "siglip_trace_spans_dropped_total";
pub const GRPC_DURATION: &str = "siglip_grpc_request_duration_seconds";
pub const INFLIGHT: &str = "siglip_inflight_requests";
pub const QUEUE_DEPTH: &str = "siglip_queue_depth";
pub const QUEUE_WAIT: &str = "siglip_queue_wait_seconds";
pub const PENDING_IMAGES: &str = "siglip_pending_images";
pub const PENDING_TEXTS: &str = "siglip_pending_texts";
pub const DECODING_PIXELS: &str = "siglip_decoding_pixels";
pub const BATCH_SIZE: &str = "siglip_batch_size";
pub const PREPROCESS: &str = "siglip_preprocess_duration_seconds";
pub const TOKENIZE: &str = "siglip_tokenize_duration_seconds";
pub const INFERENCE: &str = "siglip_inference_duration_seconds";
pub const IMAGES: &str = "siglip_images_processed_total";
pub const TEXTS: &str = "siglip_texts_processed_total";
pub const CACHE_HITS: &str = "siglip_text_cache_hits_total";
pub const CACHE_MISSES: &str = "siglip_text_cache_misses_total";
pub const CACHE_ENTRIES: &str = "siglip_text_cache_entries";
pub const ACTIVE_STREAMS: &str = "siglip_active_streams";
pub const FRAMES_RECEIVED: &str = "siglip_stream_frames_received_total";
pub const FRAMES_CLASSIFIED: &str = "siglip_stream_frames_classified_total";
pub const FRAMES_DROPPED: &str = "siglip_stream_frames_dropped_total";
pub const STALENESS: &str = "siglip_stream_result_staleness_seconds";
pub const BYTES_RECEIVED: &str = "siglip_received_bytes_total";
pub const REASSEMBLY_BYTES: &str = "siglip_reassembly_bytes";
pub const REQUESTS_DROPPED: &str = "siglip_requests_dropped_total";
pub const WORKER_PANICS: &str = "siglip_inference_worker_panics_total";
pub const INFERENCE_FAILURES: &str = "siglip_inference_failures_total";
pub const CONSECUTIVE_FAILURES: &str = "siglip_inference_consecutive_failures";
pub const MODEL_INFO: &str = "siglip_model_info";
pub const BUILD_INFO: &str = "siglip_build_info";
pub const READY: &str = "siglip_ready";
pub const CUDA_MEMORY_USED: &str = "siglip_cuda_memory_used_bytes";
pub const AUTH_REFUSED: &str = "siglip_auth_refused_total";
pub const CALLS_BY_CALLER: &str = "siglip_calls_by_caller_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "siglip_tls_handshake_failures_total";
pub const TLS_HANDSHAKES: &str = "siglip_tls_handshakes_in_progress";
pub const RELOADS: &str = "siglip_reloads_total";
pub const CPU: &str = "siglip_cpu_seconds";
pub const MODEL_BYTES: &str = "siglip_model_parameter_bytes";
pub const MODEL_LOAD_FAILURES: &str = "siglip_model_load_failures_total";
pub const MODEL_SWAPS: &str = "siglip_model_swaps_total";

/// The RPCs of `siglip.v1.Siglip`, as the `method` label.
pub const METHODS: [&str; 7] = [
    "Classify",
    "Upload",
    "Stream",
    "EmbedImage",
    "EmbedText",
    "GetModelInfo",
    "ListModels",
];
/// The RPCs of the Open Inference Protocol's `inference.GRPCInferenceService` that this server
/// implements, as the `method` label (the others answer UNIMPLEMENTED and are not counted).
pub const OIP_METHODS: [&str; 8] = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelConfig",
    "ModelInfer",
    "ModelStreamInfer",
];
/// Why a frame got no result of its own.
pub const FRAME_DROP_REASONS: [&str; 4] = ["superseded", "rate", "stale", "error"];
/// Why queued work was never run.
pub const REQUEST_DROP_REASONS: [&str; 2] = ["deadline", "cancelled"];
pub const TOWERS: [&str; 2] = ["vision", "text"];
/// The server's own CPU work, outside the model (`cpu_time`): decoding an image, resizing and
/// normalising it (or one region of it), tokenising a label set, and the inference worker's
/// share of a batch outside the forward passes (collecting jobs, copying rows in, answering).
pub const CPU_STAGES: [&str; 4] = ["decode", "preprocess", "tokenize", "batch"];
/// Why a call was refused UNAUTHENTICATED: no bearer token, or one not in the token file.
pub const AUTH_REFUSALS: [&str; 2] = ["missing", "invalid"];
/// Why a TLS handshake did not complete: the client closed the connection before it (a TCP
/// health check, a port scan), refused (bad or missing client certificate, no common
/// protocol, not TLS at all), or not finished within the handshake timeout.
pub const HANDSHAKE_FAILURES: [&str; 3] = ["closed", "refused", "timeout"];
/// The files re-read as they change (`siglip_reloads_total{what,outcome}`).
pub const RELOADED: [&str; 2] = ["tls", "tokens"];
/// Applied; rejected (it does not load: the old material stays); unreadable (a file is gone or
/// cannot be read: the old material stays).
pub const RELOAD_OUTCOMES: [&str; 3] = ["applied", "rejected", "unreadable"];
/// Why a forward pass failed: out of memory (retried in halves while it has more than one row),
/// or any other libtorch error.
pub const FAILURE_REASONS: [&str; 2] = ["out_of_memory", "error"];

/// Why a finished span was not exported: the export queue was full (`--trace-queue-spans`: the
/// collector is slower than the server), or the collector refused or did not answer the export.
pub const TRACE_DROP_REASONS: [&str; 2] = ["queue_full", "export_failed"];

/// Inference latencies from a millisecond (tiny models, GPU) to a minute (large batches on CPU).
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 60.0,
];
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Installs the global recorder with bucket layouts and descriptions, and registers every
/// series at zero.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for name in [
        GRPC_DURATION,
        QUEUE_WAIT,
        PREPROCESS,
        TOKENIZE,
        INFERENCE,
        STALENESS,
        CPU,
    ] {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.into()), &LATENCY_BUCKETS)?;
    }
    builder = builder.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCH_BUCKETS)?;
    let handle = builder
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    register_zeros();
    metrics_process::Collector::default().describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC calls handled, by method and status code"
    );
    describe_histogram!(
        GRPC_DURATION,
        Unit::Seconds,
        "gRPC call handling time, by method"
    );
    describe_gauge!(INFLIGHT, "gRPC calls being handled");
    describe_counter!(
        TRACE_SPANS_EXPORTED,
        "Spans the OTLP endpoint accepted (--otlp-endpoint)"
    );
    describe_counter!(
        TRACE_SPANS_DROPPED,
        "Finished spans never exported, by reason: the export queue full, or the export failed"
    );
    describe_gauge!(
        CUDA_MEMORY_USED,
        Unit::Bytes,
        "GPU memory in use, by device (CUDA only)"
    );
    describe_gauge!(QUEUE_DEPTH, "Jobs waiting for the inference worker");
    describe_counter!(
        AUTH_REFUSED,
        "Calls refused UNAUTHENTICATED, by reason (missing or invalid bearer token)"
    );
    describe_counter!(
        CALLS_BY_CALLER,
        "Calls past authentication, by caller: the token's name, else the client certificate's \
         common name, else \"anonymous\" (at most 64 callers, then \"other\")"
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes on the gRPC port that did not complete, by reason"
    );
    describe_gauge!(
        TLS_HANDSHAKES,
        "TLS handshakes in progress on the gRPC port (--max-tls-handshakes)"
    );
    describe_counter!(
        RELOADS,
        "Changed TLS or token files, by what (tls, tokens) and outcome (applied; rejected or \
         unreadable: the old material stays in use)"
    );
    describe_gauge!(
        PENDING_IMAGES,
        "Images accepted and not yet answered (decoding, queued or in a forward pass)"
    );
    describe_gauge!(
        PENDING_TEXTS,
        "Texts of label sets not cached, being tokenised, queued for the text tower or in a pass"
    );
    describe_gauge!(
        DECODING_PIXELS,
        "Header-declared pixels of the images being decoded or waiting for a decode slot"
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time a job waited in the inference queue"
    );
    describe_histogram!(BATCH_SIZE, Unit::Count, "Images per vision forward pass");
    describe_histogram!(
        PREPROCESS,
        Unit::Seconds,
        "Image decoding and resizing time per image"
    );
    describe_histogram!(TOKENIZE, Unit::Seconds, "Tokenisation time per label set");
    describe_histogram!(INFERENCE, Unit::Seconds, "Forward pass time, by tower");
    describe_histogram!(
        CPU,
        Unit::Seconds,
        "CPU time of the server's own work outside the model, by stage (decode, preprocess: per \
         image or region; tokenize: per label set; batch: the inference worker's per batch), from \
         per-thread clocks"
    );
    describe_counter!(IMAGES, "Images embedded by the vision tower");
    describe_counter!(TEXTS, "Texts embedded by the text tower");
    describe_counter!(CACHE_HITS, "Text embeddings found in the cache");
    describe_counter!(CACHE_MISSES, "Text embeddings not in the cache");
    describe_gauge!(CACHE_ENTRIES, "Text embeddings in the cache");
    describe_gauge!(ACTIVE_STREAMS, "Open Stream calls");
    describe_counter!(FRAMES_RECEIVED, "Complete frames received on streams");
    describe_counter!(FRAMES_CLASSIFIED, "Frames answered with scores");
    describe_counter!(
        FRAMES_DROPPED,
        "Stream frames without scores: superseded (latest-only), rate (over max_fps), stale (over max_age_ms), error (answered with an in-band error, or in events-only mode counted in dropped.error)"
    );
    describe_histogram!(
        STALENESS,
        Unit::Seconds,
        "Time from a frame's arrival to its result"
    );
    describe_counter!(
        BYTES_RECEIVED,
        Unit::Bytes,
        "Image bytes received (encoded, raw or chunks)"
    );
    describe_gauge!(
        REASSEMBLY_BYTES,
        Unit::Bytes,
        "Bytes held by unfinished Uploads and chunked frames (--max-reassembly-bytes)"
    );
    describe_counter!(
        REQUESTS_DROPPED,
        "Queued jobs dropped before inference, by reason"
    );
    describe_counter!(
        WORKER_PANICS,
        "Panics caught in the inference worker (its batches failed; it went on)"
    );
    describe_counter!(
        INFERENCE_FAILURES,
        "Forward passes that failed, by tower and reason (out_of_memory passes are run again in halves)"
    );
    describe_gauge!(
        CONSECUTIVE_FAILURES,
        "Inference batches that failed one after the other, up to now (0 after any success)"
    );
    describe_gauge!(
        MODEL_INFO,
        "Each model's serving version (labels): 1, and 0 for a version swapped out or removed"
    );
    describe_gauge!(
        MODEL_BYTES,
        Unit::Bytes,
        "Bytes of each model's parameters on its device"
    );
    describe_counter!(
        MODEL_LOAD_FAILURES,
        "Models (or new versions of them) that failed to load"
    );
    describe_counter!(
        MODEL_SWAPS,
        "New versions of a model put in service without a restart"
    );
    describe_gauge!(BUILD_INFO, "This server's version (label); always 1");
    describe_gauge!(
        READY,
        "1 once every model is loaded and warm (and its device healthy), 0 while loading or shutting down"
    );
}

fn register_zeros() {
    for stage in CPU_STAGES {
        let _ = histogram!(CPU, "stage" => stage);
    }
    for reason in FRAME_DROP_REASONS {
        counter!(FRAMES_DROPPED, "reason" => reason).absolute(0);
    }
    for reason in TRACE_DROP_REASONS {
        counter!(TRACE_SPANS_DROPPED, "reason" => reason).absolute(0);
    }
    counter!(TRACE_SPANS_EXPORTED).absolute(0);
    for reason in AUTH_REFUSALS {
        counter!(AUTH_REFUSED, "reason" => reason).absolute(0);
    }
    for reason in HANDSHAKE_FAILURES {
        counter!(TLS_HANDSHAKE_FAILURES, "reason" => reason).absolute(0);
    }
    for what in RELOADED {
        for outcome in RELOAD_OUTCOMES {
            counter!(RELOADS, "what" => what, "outcome" => outcome).absolute(0);
        }
    }
    for name in [FRAMES_RECEIVED, FRAMES_CLASSIFIED] {
        counter!(name).absolute(0);
    }
    for name in [
        INFLIGHT,
        PENDING_IMAGES,
        PENDING_TEXTS,
        DECODING_PIXELS,
        ACTIVE_STREAMS,
        REASSEMBLY_BYTES,
        TLS_HANDSHAKES,
        READY,
    ] {
        gauge!(name).set(0.0);
    }
    let _ = histogram!(STALENESS);
    // Calls refused before they name a model (no token, a malformed message) have an empty
    // `model` label.
    register_calls("");
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

fn register_calls(model: &str) {
    // The server-wide OIP calls (ServerLive, ServerReady, ServerMetadata) are about no model.
    let oip = OIP_METHODS.into_iter().filter(|m| m.starts_with("Model"));
    for method in METHODS.into_iter().chain(oip) {
        counter!(GRPC_REQUESTS, "method" => method, "code" => "OK", "model" => model.to_string())
            .increment(0);
        // Registering is enough: the exporter renders a registered histogram with zero counts.
        let _ = histogram!(GRPC_DURATION, "method" => method, "model" => model.to_string());
    }
}

/// Registers a model's series (at zero, or as they are for a model seen before: it only adds
/// zero), so that dashboards show it before its first call: every
/// per-call, per-batch, cache and queue series carries its name as the `model` label (the names
/// are the repository's folders, so the label's values are bounded by the repository).
pub fn register_model(model: &str) {
    register_calls(model);
    let label = || model.to_string();
    for tower in TOWERS {
        let _ = histogram!(INFERENCE, "tower" => tower, "model" => label());
        for reason in FAILURE_REASONS {
            counter!(INFERENCE_FAILURES, "tower" => tower, "reason" => reason, "model" => label())
                .increment(0);
        }
    }
    for reason in REQUEST_DROP_REASONS {
        counter!(REQUESTS_DROPPED, "reason" => reason, "model" => label()).increment(0);
    }
    for name in [
        IMAGES,
        TEXTS,
        CACHE_HITS,
        CACHE_MISSES,
        BYTES_RECEIVED,
        WORKER_PANICS,
        MODEL_LOAD_FAILURES,
        MODEL_SWAPS,
    ] {
        counter!(name, "model" => label()).increment(0);
    }
    for name in [QUEUE_DEPTH, CACHE_ENTRIES, CONSECUTIVE_FAILURES] {
        gauge!(name, "model" => label()).increment(0.0);
    }
    for name in [QUEUE_WAIT, BATCH_SIZE, PREPROCESS, TOKENIZE] {
        let _ = histogram!(name, "model" => label());
    }
}

/// A model version's info series: 1 while it serves, 0 once swapped out or removed.
pub fn model_info(
    name: &str,
    manifest: &crate::model::manifest::Manifest,
    on: &crate::model::RunningOn,
    serving: bool,
) {
    gauge!(
        MODEL_INFO,
        "model" => name.to_string(),
        "model_id" => manifest.model_id.clone(),
        "architecture" => manifest.architecture.clone(),
        "device" => on.device.clone(),
        "dtype" => on.dtype.name().to_string(),
        "random_weights" => manifest.source.random_weights.to_string()
    )
    .set(if serving { 1.0 } else { 0.0 });
    if serving {
        gauge!(MODEL_BYTES, "model" => name.to_string()).set(on.parameter_bytes as f64);
    }
}

/// Serves `GET /metrics` on `listener` until the process ends. Process metrics are read at each
/// scrape; histograms are drained every few seconds so that they do not grow between scrapes.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) -> anyhow::Result<()> {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            upkeep.run_upkeep();
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                metrics_process::Collector::default().collect();
                handle.render()
            }
        }),
    );
    axum::serve(listener, app).await.context("metrics server")
}

/// Binds the metrics listener (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))
}

/// Samples the memory in use on CUDA device `index` every few seconds, through NVML (the
/// driver's management library, loaded at run time). libtorch's own allocator statistics are not
/// reachable through `tch`; NVML counts every process on the device, which is what an operator
/// sizing a GPU node needs. NVML numbers devices by PCI bus order: set
/// `CUDA_DEVICE_ORDER=PCI_BUS_ID` on machines with several GPUs so that both agree.
///
/// Once per device, however many models run on it (later calls for it return at once).
pub fn watch_cuda_memory(index: u32) {
    static WATCHED: std::sync::Mutex<std::collections::BTreeSet<u32>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let first = WATCHED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(index);
    if !first {
        return;
    }
    let nvml = match nvml_wrapper::Nvml::builder()
        .lib_path("libnvidia-ml.so.1".as_ref())
        .init()
    {
        Ok(nvml) => nvml,
        Err(e) => {
            tracing::warn!("no GPU memory metric: NVML is not available ({e})");
            return;
        }
    };
    let label = format!("cuda:{index}");
    tokio::spawn(async move {
        loop {
            match nvml.device_by_index(index).and_then(|d| d.memory_info()) {
                Ok(memory) => {
                    gauge!(CUDA_MEMORY_USED, "device" => label.clone()).set(memory.used as f64)
                }
                Err(e) => {
                    tracing::warn!("GPU memory metric stopped: {e}");
                    return;
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}
