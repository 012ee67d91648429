//! The rows a parity run gives, its table and the summary line `make parity` ends with.

use std::fmt::Write as _;

use crate::model::image::{Convention, ImageProcessor, Region};

#[derive(Debug, Clone)]
pub struct PixelRow {
    pub name: String,
    pub convention: Convention,
    pub processor: ImageProcessor,
    pub file: String,
    pub size: u32,
    pub max_abs: f32,
    pub mean_abs: f64,
}

/// One image of one NaFlex check: its patches, grid and mask at the check's patch budget.
#[derive(Debug, Clone)]
pub struct NaflexRow {
    /// `naflex-<budget>`.
    pub name: String,
    pub convention: Convention,
    pub file: String,
    /// Rows and columns of patches, as this crate made them.
    pub grid: (u32, u32),
    pub grid_matches: bool,
    pub mask_matches: bool,
    pub max_abs: f32,
}

/// One text class of one tokenizer check.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub name: String,
    pub class: String,
    pub total: usize,
    pub mismatches: usize,
    /// Wall time of tokenising the class as one batch, per text.
    pub micros_per_text: f64,
    /// The first few mismatching texts, for the report.
    pub examples: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ModelRow {
    /// The model, with `@M` for a NaFlex model at patch budget M.
    pub name: String,
    /// A NaFlex model's patch budget.
    pub max_num_patches: Option<u32>,
    pub convention: Convention,
    pub processor: ImageProcessor,
    pub device: String,
    pub dtype: String,
    /// What ran the vision tower (`torchscript`, `aoti`).
    pub backend: String,
    pub image_embeds_max: f32,
    pub text_embeds_max: f32,
    pub logits_max: f32,
    pub probs_max: f32,
    /// Range of the reference probabilities: a check is only meaningful when they spread.
    pub ref_probs_range: (f32, f32),
}

/// One region of one file, through the server's path (decode once, crop, preprocess) and the
/// fp32 model, against transformers on Pillow's crop.
#[derive(Debug, Clone)]
pub struct RegionRow {
    pub name: String,
    pub convention: Convention,
    pub processor: ImageProcessor,
    pub file: String,
    /// The crop box.
    pub region: Region,
    pub pixels_max: f32,
    pub probs_max: f32,
}

#[derive(Debug, Default)]
pub struct Report {
    pub pixels: Vec<PixelRow>,
    pub naflex: Vec<NaflexRow>,
    pub tokens: Vec<TokenRow>,
    pub models: Vec<ModelRow>,
    pub regions: Vec<RegionRow>,
}

impl Report {
    pub fn pixels_max(&self) -> f32 {
        self.pixels.iter().map(|r| r.max_abs).fold(0.0, f32::max)
    }

    /// Mean absolute difference over every pixel value checked.
    pub fn pixels_mean(&self) -> f64 {
        let n = self.pixels.len().max(1) as f64;
        self.pixels.iter().map(|r| r.mean_abs).sum::<f64>() / n
    }

    pub fn naflex_pixels_max(&self) -> f32 {
        self.naflex.iter().map(|r| r.max_abs).fold(0.0, f32::max)
    }

    /// NaFlex images whose grid or mask differs from the reference's.
    pub fn naflex_shape_mismatches(&self) -> usize {
        self.naflex
            .iter()
            .filter(|r| !(r.grid_matches && r.mask_matches))
            .count()
    }

    pub fn token_counts(&self) -> (usize, usize) {
        self.tokens
            .iter()
            .fold((0, 0), |(m, t), r| (m + r.mismatches, t + r.total))
    }

    /// The float32 rows: the ones the parity thresholds apply to.
    pub fn fp32_models(&self) -> impl Iterator<Item = &ModelRow> {
        self.models.iter().filter(|r| r.dtype == "float32")
    }

    /// NaFlex models end to end (every budget), as (logits_max, probs_max).
    pub fn naflex_models_max(&self) -> (f32, f32) {
        self.models
            .iter()
            .filter(|r| r.max_num_patches.is_some())
            .fold((0.0, 0.0), |(l, p), r| {
                (l.max(r.logits_max), p.max(r.probs_max))
            })
    }

    pub fn regions_pixels_max(&self) -> f32 {
        self.regions
            .iter()
            .map(|r| r.pixels_max)
            .fold(0.0, f32::max)
    }

    pub fn regions_probs_max(&self) -> f32 {
        self.regions.iter().map(|r| r.probs_max).fold(0.0, f32::max)
    }

    /// The one-line summary `make parity` ends with (fields added later come last, so that the
    /// fields before them keep their places).
    pub fn summary(&self) -> String {
        let (mismatches, total) = self.token_counts();
        let logits = self.fp32_models().map(|r| r.logits_max).fold(0.0, f32::max);
        let probs = self.fp32_models().map(|r| r.probs_max).fold(0.0, f32::max);
        let (naflex_logits, naflex_probs) = self.naflex_models_max();
        format!(
            "parity: pixels_max={:.6} pixels_mean={:.3e} token_mismatches={mismatches}/{total} \
             logits_max={logits:.3e} probs_max={probs:.3e} regions_pixels_max={:.6} \
             regions_probs_max={:.3e} naflex_pixels_max={:.6} naflex_shape_mismatches={}/{} \
             naflex_logits_max={naflex_logits:.3e} naflex_probs_max={naflex_probs:.3e}",
            self.pixels_max(),
            self.pixels_mean(),
            self.regions_pixels_max(),
            self.regions_probs_max(),
            self.naflex_pixels_max(),
            self.naflex_shape_mismatches(),
            self.naflex.len()
        )
    }

    /// The human-readable table, without the summary line.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "pixel values vs SiglipImageProcessorPil (pil) and SiglipImageProcessor (torchvision)"
        );
        let _ = writeln!(
            s,
            "  {:<14} {:<10} {:<11} {:<40} {:>10} {:>10}",
            "filter-size", "convention", "processor", "file", "max_abs", "mean_abs"
        );
        for r in &self.pixels {
            let _ = writeln!(
                s,
                "  {:<14} {:<10} {:<11} {:<40} {:>10.6} {:>10.3e}",
                r.name, r.convention, r.processor, r.file, r.max_abs, r.mean_abs
            );
        }
        if !self.naflex.is_empty() {
            let _ = writeln!(
                s,
                "\nNaFlex patches, grid and mask vs Siglip2ImageProcessorPil (pil)"
            );
            let _ = writeln!(
                s,
                "  {:<14} {:<10} {:<40} {:>7} {:>5} {:>5} {:>10}",
                "budget", "convention", "file", "grid", "same", "mask", "max_abs"
            );
            for r in &self.naflex {
                let _ = writeln!(
                    s,
                    "  {:<14} {:<10} {:<40} {:>7} {:>5} {:>5} {:>10.6}",
                    r.name,
                    r.convention,
                    r.file,
                    format!("{}x{}", r.grid.0, r.grid.1),
                    r.grid_matches,
                    r.mask_matches,
                    r.max_abs
                );
            }
        }
        let _ = writeln!(
            s,
            "\ninput ids vs transformers' tokenizer (padding=max_length, 64), mismatches by class"
        );
        let _ = writeln!(
            s,
            "  {:<14} {:<24} {:>11} {:>9}",
            "tokenizer", "class", "mismatches", "µs/text"
        );
        for r in &self.tokens {
            let _ = writeln!(
                s,
                "  {:<14} {:<24} {:>5}/{:<5} {:>9.1}",
                r.name, r.class, r.mismatches, r.total, r.micros_per_text
            );
            for e in &r.examples {
                let _ = writeln!(s, "      e.g. {e}");
            }
        }
        let _ = writeln!(s, "\nend to end vs transformers SiglipModel (Siglip2Model for NaFlex at @M patches; fp32, CPU)");
        let _ = writeln!(
            s,
            "  {:<16} {:<10} {:<11} {:<7} {:<9} {:<11} {:>10} {:>10} {:>10} {:>10} {:>14}",
            "model",
            "convention",
            "processor",
            "device",
            "dtype",
            "vision",
            "img_emb",
            "txt_emb",
            "logits",
            "probs",
            "ref probs"
        );
        for r in &self.models {
            let _ = writeln!(
                s,
                "  {:<16} {:<10} {:<11} {:<7} {:<9} {:<11} {:>10.3e} {:>10.3e} {:>10.3e} {:>10.3e} {:>6.3}–{:<6.3}",
                r.name,
                r.convention,
                r.processor,
                r.device,
                r.dtype,
                r.backend,
                r.image_embeds_max,
                r.text_embeds_max,
                r.logits_max,
                r.probs_max,
                r.ref_probs_range.0,
                r.ref_probs_range.1
            );
        }
        let _ = writeln!(
            s,
            "\nregions vs transformers on Pillow's crop (numpy slice for raw frames), fp32"
        );
        let _ = writeln!(
            s,
            "  {:<6} {:<10} {:<11} {:<34} {:<22} {:>10} {:>10}",
            "model", "convention", "processor", "file", "box", "pixels", "probs"
        );
        for r in &self.regions {
            let _ = writeln!(
                s,
                "  {:<6} {:<10} {:<11} {:<34} {:<22} {:>10.6} {:>10.3e}",
                r.name,
                r.convention,
                r.processor,
                r.file,
                r.region.to_string(),
                r.pixels_max,
                r.probs_max
            );
        }
        s.push_str(&self.paths_table());
        s
    }

    /// One row per image path the suite checked (`--image-convention` × `--image-processor`):
    /// the largest differences of its pixel, fp32 end-to-end and region rows.
    fn paths_table(&self) -> String {
        let mut paths: Vec<(Convention, ImageProcessor)> = Vec::new();
        let rows = self.pixels.iter().map(|r| (r.convention, r.processor));
        let rows = rows.chain(self.models.iter().map(|r| (r.convention, r.processor)));
        for path in rows.chain(self.regions.iter().map(|r| (r.convention, r.processor))) {
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
        let mut s = String::new();
        let _ = writeln!(s, "\nby image path: the largest difference of each kind");
        let _ = writeln!(
            s,
            "  {:<10} {:<11} {:>6} {:>10} {:>6} {:>10} {:>7} {:>10} {:>10}",
            "convention",
            "processor",
            "images",
            "pixels",
            "models",
            "fp32 probs",
            "regions",
            "pixels",
            "probs"
        );
        let max = |values: &mut dyn Iterator<Item = f32>| values.fold(0.0, f32::max);
        for (convention, processor) in paths {
            let on = |c: Convention, p: ImageProcessor| c == convention && p == processor;
            let pixels: Vec<_> = self
                .pixels
                .iter()
                .filter(|r| on(r.convention, r.processor))
                .collect();
            let models: Vec<_> = self
                .fp32_models()
                .filter(|r| on(r.convention, r.processor))
                .collect();
            let regions: Vec<_> = self
                .regions
                .iter()
                .filter(|r| on(r.convention, r.processor))
                .collect();
            let _ = writeln!(
                s,
                "  {:<10} {:<11} {:>6} {:>10.6} {:>6} {:>10.3e} {:>7} {:>10.6} {:>10.3e}",
                convention,
                processor,
                pixels.len(),
                max(&mut pixels.iter().map(|r| r.max_abs)),
                models.len(),
                max(&mut models.iter().map(|r| r.probs_max)),
                regions.len(),
                max(&mut regions.iter().map(|r| r.pixels_max)),
                max(&mut regions.iter().map(|r| r.probs_max)),
            );
        }
        s
    }
}
