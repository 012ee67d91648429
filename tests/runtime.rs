//! The ways of running the towers compute the same embeddings (the choice is about speed only),
//! and a compiled tower that cannot be used says why.

mod common;

use siglip_serve::error::Error;
use siglip_serve::model::{
    device::BackendChoice,
    image::{preprocess, Transparency},
    LoadOptions, Model,
};

fn options(dir_var: &str, backend: BackendChoice, jit_optimize: bool) -> LoadOptions {
    LoadOptions {
        warmup_rounds: 1,
        backend,
        jit_optimize,
        ..common::cpu_options(dir_var)
    }
}

fn load(jit_optimize: bool) -> Model {
    let opts = options("SIGLIP_TEST_MODEL_DIR", BackendChoice::Auto, jit_optimize);
    Model::load(&opts).expect("model")
}

/// The tiny model with its vision tower compiled for the CPU (at most 8 images per pass).
fn load_compiled(backend: BackendChoice) -> Model {
    let opts = options("SIGLIP_TEST_AOTI_MODEL_DIR", backend, true);
    Model::load(&opts).expect("model")
}

/// Preprocessed pixels of `n` test photos (cycled), back to back.
fn photos(model: &Model, n: usize) -> Vec<f32> {
    ["chelsea_progressive.jpg", "rocket.bmp", "coffee_rgb8.png"]
        .iter()
        .cycle()
        .take(n)
        .flat_map(|name| {
            let rgb = common::decode_as_served(&common::asset(name), Transparency::Composite);
            preprocess(&rgb, model.preprocess()).values
        })
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn executor_setting_does_not_change_results() {
    let (optimized, plain) = (load(true), load(false));
    let pixels = photos(&optimized, 3);
    // Several calls, so the optimising executor's profiled and specialised runs are compared too.
    for _ in 0..3 {
        let a = optimized.embed_pixels(&pixels, 3).expect("optimized");
        let b = plain.embed_pixels(&pixels, 3).expect("plain");
        assert!(max_diff(&flat(&a), &flat(&b)) <= 1e-6);
        let texts = ["a cat", "a photo of a rocket"];
        let a = optimized.embed_texts(&texts).expect("optimized");
        let b = plain.embed_texts(&texts).expect("plain");
        assert!(max_diff(&flat(&a), &flat(&b)) <= 1e-6);
    }
}

fn flat(e: &siglip_serve::model::scores::Embeddings) -> Vec<f32> {
    e.rows().flatten().copied().collect()
}

#[test]
fn compiled_vision_tower_matches_torchscript() {
    let (compiled, traced) = (
        load_compiled(BackendChoice::Auto),
        load_compiled(BackendChoice::TorchScript),
    );
    assert_eq!(compiled.backend(), "aoti", "auto picks the package");
    assert_eq!(compiled.max_batch(), Some(8));
    assert_eq!(traced.backend(), "torchscript");
    assert_eq!(traced.max_batch(), None);
    // Batch sizes across the package's dynamic range, 1 and its maximum included.
    for n in [1, 3, 8] {
        let pixels = photos(&compiled, n);
        let a = compiled.embed_pixels(&pixels, n).expect("compiled");
        let b = traced.embed_pixels(&pixels, n).expect("traced");
        let diff = max_diff(&flat(&a), &flat(&b));
        assert!(
            diff <= 1e-5,
            "batch {n}: compiled and traced differ by {diff}"
        );
    }
}

#[test]
fn compiled_vision_tower_refuses_more_than_its_batch() {
    let compiled = load_compiled(BackendChoice::Aoti);
    let pixels = photos(&compiled, 9);
    match compiled.embed_pixels(&pixels, 9) {
        Err(Error::InvalidArgument(message)) => assert!(
            message.contains("at most 8"),
            "the message names the limit: {message}"
        ),
        other => panic!("expected InvalidArgument, got {:?}", other.map(|e| e.len())),
    }
}

#[test]
fn aoti_backend_without_a_package_says_how_to_compile_one() {
    let opts = options("SIGLIP_TEST_MODEL_DIR", BackendChoice::Aoti, true);
    let message = match Model::load(&opts) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("the plain tiny model has no compiled tower"),
    };
    assert!(
        message.contains("python -m siglip_export compile") && message.contains("--device cpu"),
        "{message}"
    );
}

#[test]
fn a_broken_package_is_a_clear_load_error() {
    let original = common::generated("SIGLIP_TEST_AOTI_MODEL_DIR");
    let dir = std::env::temp_dir().join(format!("siglip-broken-package-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for entry in std::fs::read_dir(&original).expect("model dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(dir.join("vision.float32.cpu.pt2"), b"not a package").expect("write");
    let opts = LoadOptions {
        dir: dir.clone(),
        ..common::cpu_options("SIGLIP_TEST_AOTI_MODEL_DIR")
    };
    let message = match Model::load(&opts) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a broken package must not load"),
    };
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert!(
        message.contains("cannot load the compiled vision tower") && message.contains("ZIP"),
        "{message}"
    );
    assert!(!message.contains("frame #"), "no C++ backtrace: {message}");
}
