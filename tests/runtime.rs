//! The ways of running the towers compute the same embeddings: the choice is about speed only.

mod common;

use siglip_serve::model::{
    image::{decode, preprocess, ImageLimits},
    runtime::{DType, DTypeChoice, DeviceChoice},
    LoadOptions, Model,
};

fn load(jit_optimize: bool) -> Model {
    Model::load(&LoadOptions {
        device: DeviceChoice::Cpu,
        dtype: DTypeChoice::Fixed(DType::Float32),
        warmup_rounds: 1,
        jit_optimize,
        ..LoadOptions::new(common::generated("SIGLIP_TEST_MODEL_DIR"))
    })
    .expect("model")
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
    let dir = common::generated("SIGLIP_TEST_ASSETS").join("images");
    let pixels: Vec<f32> = ["chelsea_progressive.jpg", "rocket.bmp", "coffee_rgb8.png"]
        .iter()
        .flat_map(|name| {
            let bytes = std::fs::read(dir.join(name)).expect("test photo");
            let rgb = decode(&bytes, &ImageLimits::default()).expect("decode");
            preprocess(&rgb, optimized.preprocess())
        })
        .collect();
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
