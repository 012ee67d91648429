//! Tools that run beside the server, not in it: `siglip-serve bench` (a gRPC load generator and
//! the model alone, for comparison), `siglip-serve soak` (legitimate traffic with abuse mixed
//! in, for minutes), the hostile inputs it sends (`attacks`), and `siglip-serve parity` (this
//! crate's preprocessing, tokenizer and runtime against reference values computed by
//! transformers); `client`: how `bench` and `siglip-serve health` reach a server over TLS or
//! with a token; `cost`: the CPU a bench phase cost the server, per image and by stage.

pub mod attacks;
pub mod bench;
pub mod client;
pub mod cost;
pub mod parity;
pub mod soak;
