//! `siglip-serve classify` on good and hostile files: answers, or a clear error naming the
//! problem — never a panic or an abort; and `serve` refusing settings its model cannot honour.

mod common;

use std::process::{Command, Output};

fn classify(files: &[std::path::PathBuf], labels: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_siglip-serve"))
        .arg("classify")
        .arg("--model-dir")
        .arg(common::generated("SIGLIP_TEST_MODEL_DIR"))
        .args(files)
        .arg("--labels")
        .args(labels)
        .output()
        .expect("run siglip-serve")
}

#[test]
fn classifies_a_photo_and_warns_about_random_weights() {
    let photo = common::generated("SIGLIP_TEST_ASSETS").join("images/chelsea_progressive.jpg");
    let long_label = "a very long caption ".repeat(20);
    let out = classify(&[photo], &["a photo of a cat", "a dog", &long_label]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("RANDOM weights") && stderr.contains("MEANINGLESS"),
        "{stderr}"
    );
    assert!(
        stderr.contains("truncated"),
        "long label not reported as truncated: {stderr}"
    );
    assert_eq!(stdout.matches('%').count(), 3, "{stdout}");
}

#[test]
fn every_bad_file_gets_a_clear_error() {
    let bad = common::generated("SIGLIP_TEST_ASSETS").join("bad");
    let cases = [
        ("empty.jpg", "empty"),
        ("corrupt.jpg", "not an image"),
        ("truncated.jpg", "truncated"),
        ("truncated.png", "image"),
        ("text.jpg", "not an image"),
        ("unsupported.pdf", "JPEG, PNG"),
        ("huge_dimensions.png", "--max-image-pixels"),
        ("does-not-exist.jpg", "cannot read"),
    ];
    for (file, needle) in cases {
        let out = classify(&[bad.join(file)], &["a photo"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        assert!(!stderr.contains("panicked"), "{file}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_default();
        assert!(line.contains(needle), "{file}: {line:?} lacks {needle:?}");
    }
}

#[test]
fn labels_are_required() {
    let photo = common::generated("SIGLIP_TEST_ASSETS").join("images/rocket.bmp");
    let out = Command::new(env!("CARGO_BIN_EXE_siglip-serve"))
        .arg("classify")
        .arg("--model-dir")
        .arg(common::generated("SIGLIP_TEST_MODEL_DIR"))
        .arg(photo)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--labels"));
}

/// Runs `serve` on the model named by `model_var` with `flags`; it must refuse to start, saying
/// `why` on stderr.
fn serve_refuses(model_var: &str, flags: &[&str], why: &str) {
    let out = common::server::serve_command(&common::generated(model_var), flags)
        .output()
        .expect("run siglip-serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(why), "{stderr}");
}

#[test]
fn serve_refuses_a_batch_size_the_compiled_tower_cannot_take() {
    serve_refuses(
        "SIGLIP_TEST_AOTI_MODEL_DIR",
        &["--device", "cpu", "--max-batch-size", "16"],
        "--max-batch-size 16 is more than the compiled vision tower accepts (8)",
    );
}

#[test]
fn serve_refuses_fewer_pending_images_than_one_request_may_send() {
    serve_refuses(
        "SIGLIP_TEST_MODEL_DIR",
        &["--max-pending-images", "8", "--max-images", "64"],
        "--max-pending-images 8 is less than --max-images 64",
    );
}
