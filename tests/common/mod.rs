//! Shared by the integration tests: paths to what `make test` generates, and a server process.
// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use siglip_serve::model::{
    device::{DType, DTypeChoice, DeviceChoice},
    image::{decode, Convention, ImageLimits, Transparency},
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

/// A test image's bytes (`make test` generates them).
pub fn asset(name: &str) -> Vec<u8> {
    std::fs::read(generated("SIGLIP_TEST_ASSETS").join("images").join(name)).expect("asset")
}

/// An encoded image decoded as the server decodes it: default limits, the processor's convention
/// and `transparency` (the model's RGB rule).
pub fn decode_as_served(bytes: &[u8], transparency: Transparency) -> image::RgbImage {
    decode(
        bytes,
        &ImageLimits::default(),
        Convention::Processor,
        transparency,
    )
    .expect("decode")
}

/// Polls `done` until it holds; fails the test, saying `what` did not happen, after 30 s
/// (rather than hang).
pub async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < until, "{what} did not happen within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The slowest of `calls` runs of `call`. A bound made from one sample inherits that sample's
/// luck; the slowest of a few, taken on the same machine under the same load as the run it is
/// compared with, already holds that machine's scheduling noise.
pub async fn slowest_of(calls: usize, mut call: impl AsyncFnMut()) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..calls {
        let started = Instant::now();
        call().await;
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// `photo` (an encoded image) tiled `k`×`k` and encoded as a JPEG: the same content, so about
/// the same decoding cost per pixel, `k`² times the pixels. For tests that need an image whose
/// decode takes at least a measured time, whatever the decoder's speed.
pub fn tiled_jpeg(photo: &[u8], k: u32) -> Vec<u8> {
    let tile = image::load_from_memory(photo).expect("decode").to_rgb8();
    let (w, h) = tile.dimensions();
    let mut out = image::RgbImage::new(w * k, h * k);
    for (x, y, px) in out.enumerate_pixels_mut() {
        *px = *tile.get_pixel(x % w, y % h);
    }
    let mut bytes = std::io::Cursor::new(Vec::new());
    out.write_to(&mut bytes, image::ImageFormat::Jpeg)
        .expect("encode");
    bytes.into_inner()
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

/// A scratch folder for one test's files, removed at the end.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("siglip-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        pki::write(&path, text);
        path.to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub mod pki;
pub mod server;
