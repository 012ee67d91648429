//! Parity with transformers (the reference implementation), on reference values that
//! `make test` computed with transformers in the same run.

mod common;

use siglip_serve::{model::runtime::DeviceChoice, parity};

#[test]
fn matches_transformers() {
    let suite = common::generated("SIGLIP_PARITY_SUITE");
    let report = parity::run(&suite, DeviceChoice::Cpu).expect("parity suite runs");
    println!("{}\n{}", report.table(), report.summary());

    assert!(
        report.pixels.len() >= 40,
        "too few pixel checks: {}",
        report.pixels.len()
    );
    assert!(
        report.pixels.iter().any(|r| r.name.starts_with("bilinear")),
        "expected bilinear (SigLIP 2) pixel checks"
    );
    // Pillow is pinned (13.0.0): the port must match it exactly, not within a rounding step.
    for row in &report.pixels {
        assert_eq!(
            row.max_abs, 0.0,
            "{} {} at {}: max abs diff {}",
            row.name, row.file, row.size, row.max_abs
        );
    }

    let (_, total) = report.token_counts();
    assert!(total >= 1000, "token corpus too small: {total}");
    // The only class allowed to differ in the main corpus: equal-score segmentation ties, which
    // sentencepiece breaks by float32 rounding (documented in the README).
    for row in &report.tokens {
        assert_eq!(
            row.mismatches, row.ties,
            "{}: mismatches other than ties: {:?}",
            row.name, row.examples
        );
        assert!(
            row.ties * 500 <= row.total,
            "{}: too many ties: {}",
            row.name,
            row.ties
        );
    }

    let fp32: Vec<_> = report.fp32_models().collect();
    let mut names: Vec<&str> = fp32.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["base-224", "tiny", "tiny-aoti", "tiny-siglip2"]);
    assert!(
        fp32.iter()
            .any(|r| r.name == "tiny-aoti" && r.backend == "aoti"),
        "expected the compiled (aoti) vision tower to run tiny-aoti"
    );
    for row in fp32 {
        let (lo, hi) = row.ref_probs_range;
        assert!(
            lo < 0.2 && hi > 0.8,
            "{}: reference probabilities {lo}..{hi} do not spread over (0, 1)",
            row.name
        );
        let checks = [
            ("image embeddings", row.image_embeds_max, 1e-5),
            ("text embeddings", row.text_embeds_max, 1e-5),
            ("logits", row.logits_max, 1e-4),
            ("probabilities", row.probs_max, 1e-5),
        ];
        for (what, diff, limit) in checks {
            assert!(
                diff <= limit,
                "{}: {what} off by {diff} (limit {limit})",
                row.name
            );
        }
    }

    // bf16 and fp16 exports against the fp32 reference: close, not equal (README figures:
    // logits up to 1.0e-1, probabilities up to 2.1e-2).
    let reduced: Vec<_> = report
        .models
        .iter()
        .filter(|r| r.dtype != "float32")
        .collect();
    assert!(
        reduced.len() >= 3,
        "expected bf16/fp16 rows: {}",
        reduced.len()
    );
    for row in reduced {
        let checks = [
            ("image embeddings", row.image_embeds_max, 1e-2),
            ("text embeddings", row.text_embeds_max, 1e-2),
            ("logits", row.logits_max, 0.25),
            ("probabilities", row.probs_max, 0.05),
        ];
        for (what, diff, limit) in checks {
            assert!(
                diff <= limit,
                "{} {}: {what} off by {diff} (limit {limit})",
                row.name,
                row.dtype
            );
        }
    }
}
