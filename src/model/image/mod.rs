//! Image input for SigLIP: bytes or raw frames → RGB8 → `pixel_values`.
//!
//! The reference is transformers' SigLIP image processor, either backend ([`ImageProcessor`]):
//! Pillow decodes, the image becomes RGB by one of two [`Convention`]s, then it is resized
//! straight to `size × size` with the backend's bicubic filter (bilinear for SigLIP 2) on 8-bit
//! pixels, rescaled by 1/255 and normalised with mean 0.5, std 0.5 (one fused step in the
//! torchvision backend). Every step reproduces its counterpart exactly (JPEG through
//! libjpeg-turbo's decoder, compositing and both resamplers ported from their C/C++), so the
//! server's embeddings equal those of the Python code on the paths `ImageProcessor` names.
//!
//! Untrusted input is bounded by [`ImageLimits`], checked from the header before any pixel
//! buffer is allocated; every failure is an [`ImageError`] whose message says what to fix.
//! [`decode`] is synchronous and CPU-bound: run it on a blocking pool.

mod crop;
mod decode;
mod jpeg;
mod jpeg_markers;
mod limits;
pub mod naflex;
mod normalize;
mod orientation;
mod resize;
mod rgb;
mod transparency;

pub use crate::error::ImageError;
pub use crop::{check_shape, check_within, crop, Region};
pub use image::RgbImage;
pub use limits::ImageLimits;
pub use naflex::Grid;
pub use resize::Filter;

/// Which transformers code path an image takes to RGB: the two disagree on transparent and
/// EXIF-rotated images (by up to 0.6 in probability on a transparent logo).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Convention {
    /// `processor(images=Image.open(f))`, the way SigLIP's model card calls it: transparency
    /// (alpha, palette alpha, a colour key) is composited onto white, with Pillow's integer
    /// arithmetic (`convert_to_rgb`); EXIF orientation is ignored.
    #[default]
    Processor,
    /// `pipeline("zero-shot-image-classification")` and `load_image(f)`: EXIF orientation is
    /// applied, then `convert("RGB")` drops alpha, keeping the colour stored under transparent
    /// pixels (a single transparent colour still turns white).
    Pipeline,
}

impl Convention {
    pub fn name(self) -> &'static str {
        match self {
            Convention::Processor => "processor",
            Convention::Pipeline => "pipeline",
        }
    }
}

impl std::fmt::Display for Convention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for Convention {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "processor" => Ok(Convention::Processor),
            "pipeline" => Ok(Convention::Pipeline),
            other => Err(format!(
                "unknown image convention {other:?}: choose processor or pipeline"
            )),
        }
    }
}

/// Which backend of transformers' SigLIP image processor the pixels reproduce. They share the
/// RGB conversion of an image file; they differ in the resampler (a level or a few apart
/// somewhere in most photos), in how rescaling and normalising round, and in compositing a raw
/// RGBA array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageProcessor {
    /// `SiglipImageProcessorPil`: what `AutoImageProcessor` returns where torchvision is not
    /// installed. Pillow's resampler; numpy rescales in `f64`, then normalises in `f32`.
    #[default]
    Pil,
    /// `SiglipImageProcessor`, the torchvision backend: what `AutoImageProcessor` (and so
    /// `AutoProcessor` and the pipeline) picks wherever torchvision is importable, as in
    /// Colab. torch's antialiased uint8 `interpolate`, as torchvision runs it on a CPU with
    /// AVX2 (bilinear elsewhere, and any filter on a GPU, go through `float32`: not reproduced);
    /// rescale fused into the normalisation.
    Torchvision,
}

impl ImageProcessor {
    pub fn name(self) -> &'static str {
        match self {
            ImageProcessor::Pil => "pil",
            ImageProcessor::Torchvision => "torchvision",
        }
    }
}

impl std::fmt::Display for ImageProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for ImageProcessor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pil" => Ok(ImageProcessor::Pil),
            "torchvision" => Ok(ImageProcessor::Torchvision),
            other => Err(format!(
                "unknown image processor {other:?}: choose pil or torchvision"
            )),
        }
    }
}

/// What a model's image processor does with transparency once the [`Convention`] has opened the
/// image (its `do_convert_rgb`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transparency {
    /// SigLIP's processors: transformers' `convert_to_rgb` composites whatever Pillow reports as
    /// transparent onto white.
    #[default]
    Composite,
    /// SigLIP 2 NaFlex's processor leaves `do_convert_rgb` unset: the image is Pillow's
    /// `convert("RGB")` of what the convention opened (alpha dropped, a transparent colour kept
    /// as its colour). Through `Image.open` transformers refuses an image that is not RGB; this
    /// server converts it as that fix, `.convert("RGB")`, would.
    Drop,
}

/// A SigLIP 2 NaFlex model's patching: at most `budget` (M) patches of `size × size` pixels,
/// on a grid of the image's own aspect ratio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patches {
    pub size: u32,
    pub budget: u32,
}

/// How an RGB8 image becomes model input: SigLIP's `preprocessor_config.json` values, and the
/// processor backend whose arithmetic to follow.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    /// Side of the square the image is resized to (unused with `patches`).
    pub size: u32,
    /// SigLIP 2 NaFlex: patches at the image's aspect ratio instead of a square.
    pub patches: Option<Patches>,
    /// The resampling filter (`resample`).
    pub filter: Filter,
    /// Multiplier from 0..=255 to the model's range, kept in `f64` as `preprocessor_config.json`
    /// gives it: each backend rounds it its own way (see `normalize`).
    pub rescale: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub processor: ImageProcessor,
    pub transparency: Transparency,
}

impl Preprocess {
    /// SigLIP's standard values at the given size: bicubic, rescale 1/255, mean and std 0.5,
    /// the PIL backend.
    pub fn siglip(size: u32) -> Self {
        Self {
            size,
            patches: None,
            filter: Filter::Bicubic,
            rescale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.5; 3],
            processor: ImageProcessor::Pil,
            transparency: Transparency::Composite,
        }
    }

    /// The same preprocessing at patch budget `budget` (a NaFlex model's; a square one's is
    /// unchanged).
    pub fn with_budget(&self, budget: u32) -> Self {
        Self {
            patches: self.patches.map(|p| Patches { budget, ..p }),
            ..*self
        }
    }

    /// Floats in one preprocessed image: `3·size²`, or M patches of `3·P²`.
    pub fn values_per_image(&self) -> usize {
        match self.patches {
            None => 3 * (self.size as usize).pow(2),
            Some(p) => p.budget as usize * 3 * (p.size as usize).pow(2),
        }
    }

    /// The shape of one image's `pixel_values`: `[3, size, size]`, or `[M, 3·P²]`.
    pub fn dims(&self) -> Vec<i64> {
        match self.patches {
            None => vec![3, i64::from(self.size), i64::from(self.size)],
            Some(p) => vec![i64::from(p.budget), 3 * i64::from(p.size).pow(2)],
        }
    }
}

/// One image as the vision tower takes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pixels {
    /// `pixel_values`: CHW floats, or a NaFlex model's M patches (the real ones first).
    pub values: Vec<f32>,
    /// NaFlex: the grid of the real patches (`spatial_shapes`; `pixel_attention_mask` follows).
    pub grid: Option<naflex::Grid>,
}

/// A square model's image: CHW floats.
impl From<Vec<f32>> for Pixels {
    fn from(values: Vec<f32>) -> Self {
        Self { values, grid: None }
    }
}

/// Pixel layout of a raw video frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawFormat {
    Rgb8,
    Rgba8,
}

impl RawFormat {
    fn bytes_per_pixel(self) -> usize {
        match self {
            RawFormat::Rgb8 => 3,
            RawFormat::Rgba8 => 4,
        }
    }
}

/// Decodes JPEG, PNG, GIF (first frame), WebP, BMP or TIFF to RGB8 by Pillow's rules, the
/// way `convention` says (see `rgb` for each mode's rule, `transparency` for transparency).
pub fn decode(
    bytes: &[u8],
    limits: &ImageLimits,
    convention: Convention,
    transparency: Transparency,
) -> Result<RgbImage, ImageError> {
    decode::decode(bytes, limits, convention, transparency)
}

/// An encoded image's width × height from its header alone (microseconds: no pixel is decoded,
/// nothing is inflated), checked against the limits: what decoding it will cost.
pub fn declared_pixels(bytes: &[u8], limits: &ImageLimits) -> Result<u64, ImageError> {
    let (width, height) = decode::declared_size(bytes, limits)?;
    Ok(u64::from(width) * u64::from(height))
}

/// Wraps a raw, tightly packed frame (e.g. from a video decoder). RGBA is composited onto
/// white under the processor convention (as `prep.processor`'s `convert_to_rgb` does for an
/// array) and loses its alpha under the pipeline convention or [`Transparency::Drop`].
pub fn from_raw(
    width: u32,
    height: u32,
    format: RawFormat,
    data: &[u8],
    limits: &ImageLimits,
    convention: Convention,
    prep: &Preprocess,
) -> Result<RgbImage, ImageError> {
    limits
        .check_dimensions(width, height)
        .map_err(|e| match e {
            ImageError::Corrupt(msg) => ImageError::BadRawFrame(msg),
            other => other,
        })?;
    let expected = width as usize * height as usize * format.bytes_per_pixel();
    if data.len() != expected {
        return Err(ImageError::BadRawFrame(format!(
            "{width}x{height} {format:?} needs {expected} bytes, got {}",
            data.len()
        )));
    }
    let rgb = match format {
        RawFormat::Rgb8 => data.to_vec(),
        RawFormat::Rgba8 => {
            let mut rgb = Vec::with_capacity(expected / 4 * 3);
            let convention = match prep.transparency {
                Transparency::Composite => convention,
                Transparency::Drop => Convention::Pipeline,
            };
            rgb::rgba_to_rgb(data, convention, prep.processor, &mut rgb);
            rgb
        }
    };
    Ok(RgbImage::from_raw(width, height, rgb).expect("length checked above"))
}

/// Writes the model input for `img` into `out` (CHW, `3·size·size` floats): resize to
/// `size × size` with the model's filter by `p.processor`'s resampler (skipped when the image
/// already has that size, as both backends do), then `(v·rescale − mean) / std` rounded as
/// that backend rounds. A NaFlex model's patches are written by [`naflex::write_patches`].
///
/// # Panics
/// If `out` does not hold exactly [`Preprocess::values_per_image`] floats.
pub fn preprocess_into(img: &RgbImage, p: &Preprocess, out: &mut [f32]) -> Option<naflex::Grid> {
    if let Some(patches) = p.patches {
        return Some(naflex::write_patches(img, p, patches, out));
    }
    if img.dimensions() == (p.size, p.size) {
        normalize::write_chw(img, p, out);
    } else {
        let resized = resize::resize(img, p.size, p.size, p.filter, p.processor);
        normalize::write_chw(&resized, p, out);
    }
    None
}

/// [`preprocess_into`] into new [`Pixels`].
pub fn preprocess(img: &RgbImage, p: &Preprocess) -> Pixels {
    let mut values = vec![0.0; p.values_per_image()];
    let grid = preprocess_into(img, p, &mut values);
    Pixels { values, grid }
}

#[cfg(test)]
mod tests;
