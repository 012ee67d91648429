//! Shared by the integration tests: paths to what `make test` generates, and a server process.
// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::path::PathBuf;

use siglip_serve::model::{
    runtime::{DType, DTypeChoice, DeviceChoice},
    LoadOptions, Model,
};

/// A path from an environment variable set by `make test`; panics with the fix when it is not.
pub fn generated(var: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests with `make test`, which generates the models, images and reference values first")
    });
    assert!(
        path.exists(),
        "{var}={} does not exist: run `make test`",
        path.display()
    );
    path
}

/// Loading a model directory `make test` generated (named by the variable `var`): on the CPU, in
/// float32, without warm-up.
pub fn cpu_options(var: &str) -> LoadOptions {
    LoadOptions {
        device: DeviceChoice::Cpu,
        dtype: DTypeChoice::Fixed(DType::Float32),
        warmup_rounds: 0,
        ..LoadOptions::new(generated(var))
    }
}

pub fn cpu_model(var: &str) -> Model {
    Model::load(&cpu_options(var)).expect("model")
}

pub mod server;
