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
//! - [`grpc`]: the gRPC server, a thin layer over [`infer`].
//! - [`bench`]: a load generator for a running server, and the model alone, for comparison.
//! - [`metrics`]: Prometheus metrics, all names in one place.
//! - [`parity`]: checks all of the above against reference values computed by transformers.
//! - [`config`]: command-line flags (each also an environment variable).
//! - [`error`]: the one error type.

pub mod batch;
pub mod bench;
pub mod config;
pub mod error;
pub mod grpc;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod parity;
pub mod server;
