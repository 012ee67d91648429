//! The command line's subcommands beside the server; each runs apart from it (none is part of
//! `serve`):
//! - `classify`: local files against labels, through the core like every API call;
//! - `health`: a server's gRPC health, as an exit code (container health checks);
//! - `bench`: load on a running server over gRPC, and the model alone for comparison;
//! - `soak`: legitimate traffic with abuse mixed in, for minutes (`attacks`: the hostile inputs);
//! - `parity`: preprocessing, tokenizer and runtime against transformers' reference values.
//!
//! Shared by them: `client` (how they reach a server over TLS or with a token, and wait for it
//! to be ready), `cost` (the CPU a bench phase cost the server), `stats` (percentiles and a
//! process's memory), `otlp_sink` (an OTLP trace receiver for the bench's tracing phase and the
//! tests).

pub mod attacks;
pub mod bench;
pub mod classify;
pub mod client;
pub mod cost;
pub mod health;
pub mod otlp_sink;
pub mod parity;
pub mod soak;
pub mod stats;
