//! Tools that run beside the server, not in it: `siglip-serve bench` (a gRPC load generator and
//! the model alone, for comparison) and `siglip-serve parity` (this crate's preprocessing,
//! tokenizer and runtime against reference values computed by transformers).

pub mod bench;
pub mod parity;
