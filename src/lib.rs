//! # siglip-serve
//!
//! A gRPC inference server for Google's SigLIP image–text models: zero-shot classification of
//! images and video frames, answered with one **independent sigmoid probability per text label**,
//! `sigmoid(exp(logit_scale) · cos(image, text) + logit_bias)`.
//!
//! The layers, from the outside in, each using only those after it (`tests/layers.rs` checks):
//! - [`grpc`]: the gRPC server — [`grpc::transport`] runs connections and decides who may call
//!   (knows nothing of SigLIP), [`grpc::api`] turns `siglip.v1` messages into calls on the core
//!   of the model each names, [`grpc::oip`] the Open Inference Protocol's tensors likewise.
//! - [`repository`]: the models by name — the folders on disk, loading each version with its own
//!   queue and core, swapping versions while serving.
//! - [`infer`]: the core every API calls — admission, decoding and preprocessing on a bounded
//!   CPU pool, tokenisation and the text cache, SigLIP's scores. Knows nothing of gRPC.
//! - [`batch`]: a model's fair inference queue and the thread that owns the model and runs it in
//!   batches, taking turns on a device shared with other models.
//! - [`stream`]: what a stream watches — frame policy, drop counts, smoothing, events,
//!   heartbeats. Plain logic that the Stream protocol drives.
//! - [`model`]: the model directory (written by the Python export tool), image decoding and
//!   preprocessing that reproduce transformers exactly, tokenisation, the libtorch runtime.
//!
//! Beside them: [`server`] (the composition root of `serve` and its lifecycle), [`config`]
//! (flags, each also an environment variable), [`health`], [`metrics`] (every name in one
//! place), [`telemetry`] (logs and OpenTelemetry traces), [`cpu_time`] (the CPU each of the server's own stages uses), [`error`] (the one
//! error type), and [`tools`] (the command line's other subcommands: classify, health, bench,
//! soak, parity).

pub mod batch;
pub mod config;
pub mod cpu_time;
pub mod error;
pub mod grpc;
pub mod health;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod repository;
pub mod server;
pub mod stream;
pub mod telemetry;
pub mod tools;
