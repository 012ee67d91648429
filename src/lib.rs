//! # siglip-serve
//!
//! A gRPC inference server for Google's SigLIP image–text models: zero-shot classification of
//! images and video frames, answered with one **independent sigmoid probability per text label**,
//! `sigmoid(exp(logit_scale) · cos(image, text) + logit_bias)`.
//!
//! Where things live:
//! - [`model`]: the model directory (written by the Python export tool), image decoding and
//!   preprocessing that reproduce transformers exactly, tokenisation, and the libtorch runtime.
//! - [`infer`]: the core every API calls — validation, preprocessing pool, scores.
//! - [`batch`]: the bounded inference queue and the worker thread that owns the model.
//! - [`grpc`]: the gRPC transport, a thin layer over [`infer`].
//! - [`health`]: what health reports, from the inference worker's consecutive failures.
//! - [`server`]: the composition root of `serve`: builds the pieces above and runs the lifecycle.
//! - [`metrics`]: Prometheus metrics, all names in one place.
//! - [`cpu_time`]: the CPU each of the server's own stages uses, from per-thread clocks.
//! - [`config`]: command-line flags (each also an environment variable).
//! - [`error`]: the one error type.
//! - [`video`]: what a stream watches: frame policy, drop counts, smoothing, events, heartbeats.
//! - [`tools`]: beside the server — a load generator, and the parity check against transformers.

pub mod batch;
pub mod config;
pub mod cpu_time;
pub mod error;
pub mod grpc;
pub mod health;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod server;
pub mod tools;
pub mod video;
