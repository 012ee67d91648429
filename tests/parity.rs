//! Parity with transformers (the reference implementation), on reference values that
//! `make test` computed with transformers in the same run.

mod common;

use siglip_serve::{
    model::{
        device::DeviceChoice,
        image::{Convention, ImageProcessor},
    },
    tools::parity,
};

/// Every image path the server offers: `--image-convention` × `--image-processor`.
const PATHS: [(Convention, ImageProcessor); 4] = [
    (Convention::Processor, ImageProcessor::Pil),
    (Convention::Pipeline, ImageProcessor::Pil),
    (Convention::Processor, ImageProcessor::Torchvision),
    (Convention::Pipeline, ImageProcessor::Torchvision),
];

#[test]
fn matches_transformers() {
    let suite = common::generated("SIGLIP_PARITY_SUITE");
    let report = parity::run(&suite, DeviceChoice::Cpu).expect("parity suite runs");
    println!("{}\n{}", report.table(), report.summary());

    // Every image kind, at 224 and 384, bicubic and bilinear, by every image path: both
    // conventions, each through both backends of the image processor.
    for (convention, processor) in PATHS {
        let rows = report
            .pixels
            .iter()
            .filter(|r| (r.convention, r.processor) == (convention, processor))
            .count();
        assert!(
            rows >= 160,
            "too few {convention}/{processor} pixel checks: {rows}"
        );
    }
    assert!(
        report.pixels.iter().any(|r| r.name.starts_with("bilinear")),
        "expected bilinear (SigLIP 2) pixel checks"
    );
    // The two backends' references differ (else matching both would prove nothing about the
    // second): by at least one 8-bit level (2/255 normalised) in some image.
    let pixels = |name: &str| {
        let path = suite.parent().unwrap().join(name);
        let tensors = tch::Tensor::read_safetensors(&path).expect("pixel reference");
        tensors
            .into_iter()
            .find(|(n, _)| n == "pixel_values")
            .unwrap()
            .1
    };
    let apart = (pixels("bicubic-224-processor.safetensors")
        - pixels("bicubic-224-processor-torchvision.safetensors"))
    .abs()
    .max()
    .double_value(&[]);
    assert!(
        apart >= 1.5 / 255.0,
        "the pil and torchvision references agree to {apart}"
    );
    // Pillow (13.0.0) and torch (2.11.0) are pinned: the ports must match them exactly, not
    // within a rounding step.
    for row in &report.pixels {
        assert_eq!(
            row.max_abs, 0.0,
            "{} {}/{} {} at {}: max abs diff {}",
            row.name, row.convention, row.processor, row.file, row.size, row.max_abs
        );
    }

    // Every tokenizer (SigLIP with and without byte fallback, SigLIP 2's Gemma) on the captions
    // and at least 20,000 adversarial strings: not one id may differ.
    for name in ["tiny", "base-224", "tiny-siglip2"] {
        let rows: Vec<_> = report.tokens.iter().filter(|r| r.name == name).collect();
        let adversarial: usize = rows
            .iter()
            .filter(|r| r.class != "captions")
            .map(|r| r.total)
            .sum();
        assert!(
            adversarial >= 20_000 && rows.len() >= 10,
            "{name}: {adversarial} adversarial texts in {} classes",
            rows.len()
        );
        assert!(rows
            .iter()
            .any(|r| r.class == "captions" && r.total >= 1000));
    }
    // Added tokens with every strip flag, on a SigLIP tokenizer.
    assert!(report
        .tokens
        .iter()
        .any(|r| r.name == "tiny+added" && r.class == "added_tokens" && r.total >= 500));
    for row in &report.tokens {
        assert_eq!(
            row.mismatches, 0,
            "{} {}: {} of {} texts tokenised differently, e.g. {:?}",
            row.name, row.class, row.mismatches, row.total, row.examples
        );
    }

    let fp32: Vec<_> = report.fp32_models().collect();
    let mut names: Vec<String> = fp32
        .iter()
        .map(|r| format!("{} {}/{}", r.name, r.convention, r.processor))
        .collect();
    names.sort_unstable();
    let naflex = [256, 576, 1024]
        .into_iter()
        .flat_map(|m| ["processor", "pipeline"].map(|c| format!("tiny-naflex@{m} {c}/pil")));
    let mut expected: Vec<String> = ["base-224", "tiny", "tiny-siglip2"]
        .iter()
        .flat_map(|m| PATHS.map(|(c, p)| format!("{m} {c}/{p}")))
        .chain(["tiny-aoti processor/pil".to_string()])
        .chain(naflex)
        .collect();
    expected.sort_unstable();
    assert_eq!(names, expected);
    assert!(
        fp32.iter()
            .any(|r| r.name == "tiny-aoti" && r.backend == "aoti"),
        "expected the compiled (aoti) vision tower to run tiny-aoti"
    );
    for row in fp32 {
        let (lo, hi) = row.ref_probs_range;
        assert!(
            lo < 0.2 && hi > 0.8,
            "{} {}/{}: reference probabilities {lo}..{hi} do not spread over (0, 1)",
            row.name,
            row.convention,
            row.processor
        );
        let checks = [
            ("image embeddings", row.image_embeds_max, 1e-5),
            ("text embeddings", row.text_embeds_max, 1e-5),
            ("logits", row.logits_max, 1e-4),
            ("probabilities", row.probs_max, 1e-6),
        ];
        for (what, diff, limit) in checks {
            assert!(
                diff <= limit,
                "{} {}/{}: {what} off by {diff} (limit {limit})",
                row.name,
                row.convention,
                row.processor
            );
        }
    }

    // SigLIP 2 NaFlex: patches, grids and masks at every budget by both conventions, every test
    // image (the processor convention's RGB ones: transformers refuses the others) and the
    // extreme shapes, 1:20 to 20:1, 1×1, 3×500 and 4000×3000.
    for budget in [256, 576, 1024] {
        for convention in [Convention::Processor, Convention::Pipeline] {
            let rows: Vec<_> = report
                .naflex
                .iter()
                .filter(|r| r.name == format!("naflex-{budget}") && r.convention == convention)
                .collect();
            let files = |name: &str| rows.iter().any(|r| r.file == name);
            // Every RGB test image under the processor convention (transformers refuses the
            // others), every test image under the pipeline convention, and the extreme shapes.
            let least = match convention {
                Convention::Processor => 28,
                Convention::Pipeline => 55,
            };
            let shapes = ["20x400", "400x20", "1x1", "3x500", "500x3", "4000x3000"];
            assert!(
                rows.len() >= least
                    && shapes
                        .iter()
                        .all(|shape| files(&format!("chelsea_{shape}.png"))),
                "too few NaFlex {budget} {convention} rows: {}",
                rows.len()
            );
        }
    }
    assert!(
        report
            .naflex
            .iter()
            .any(|r| r.convention == Convention::Pipeline && r.file == "coffee_rgb_key.png"),
        "expected transparency cases under the pipeline convention"
    );
    for row in &report.naflex {
        assert!(
            row.max_abs == 0.0 && row.grid_matches && row.mask_matches,
            "{} {} {}: pixels off by {}, grid {:?} matches {}, mask matches {}",
            row.name,
            row.convention,
            row.file,
            row.max_abs,
            row.grid,
            row.grid_matches,
            row.mask_matches
        );
    }

    // Stream regions: every case file × every box, by every image path, through the server's
    // path (decode once, crop, preprocess), against transformers on Pillow's crop.
    for (convention, processor) in PATHS {
        let rows: Vec<_> = report
            .regions
            .iter()
            .filter(|r| (r.convention, r.processor) == (convention, processor))
            .collect();
        let mut files: Vec<&str> = rows.iter().map(|r| r.file.as_str()).collect();
        files.dedup();
        assert!(
            rows.len() >= 60 && files.len() >= 12,
            "too few {convention}/{processor} region checks: {} rows over {} files",
            rows.len(),
            files.len()
        );
        let shaped = |w: u32, h: u32| {
            rows.iter()
                .any(|r| (r.region.width, r.region.height) == (w, h))
        };
        assert!(
            shaped(1, 1) && shaped(224, 224),
            "expected 1x1 and 224x224 regions"
        );
    }
    for row in &report.regions {
        assert!(
            row.pixels_max == 0.0 && row.probs_max <= 1e-6,
            "{}/{} {} region {}: pixels off by {}, probabilities by {} (limits 0.0, 1e-6)",
            row.convention,
            row.processor,
            row.file,
            row.region,
            row.pixels_max,
            row.probs_max
        );
    }

    // bf16 and fp16 exports against the fp32 reference: close, not equal (tests/PARITY.md has
    // the figures measured: logits up to 7.8e-2, probabilities up to 1.4e-2).
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
