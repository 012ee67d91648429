//! An image as a caller sends it, encoded or raw, and what decoding and preprocessing make of it.

use crate::cpu_time;
use crate::error::{Error, Result};
use crate::model::image::{
    self, Convention, ImageLimits, Pixels, Preprocess, RawFormat, Region, RgbImage,
};

/// An image as a caller sends it.
#[derive(Debug, Clone)]
pub enum ImageInput {
    Encoded(Vec<u8>),
    Raw {
        width: u32,
        height: u32,
        format: RawFormat,
        data: Vec<u8>,
    },
}

impl ImageInput {
    /// Width × height, from an encoded image's header alone and checked against the limits (a
    /// raw frame's are checked when it is prepared): what decoding it will cost.
    pub fn declared_pixels(&self, limits: &ImageLimits) -> Result<u64> {
        Ok(match self {
            ImageInput::Encoded(b) => image::declared_pixels(b, limits)?,
            ImageInput::Raw { width, height, .. } => u64::from(*width) * u64::from(*height),
        })
    }

    /// Bytes as received: what the bytes metric counts.
    pub(super) fn received_bytes(&self) -> usize {
        match self {
            ImageInput::Encoded(b) => b.len(),
            ImageInput::Raw { data, .. } => data.len(),
        }
    }

    /// Decoded (within the limits) to RGB8 by `convention` and the model's transparency rule
    /// (a raw RGBA frame composited as `prep.processor` does).
    pub fn decode(
        self,
        limits: &ImageLimits,
        convention: Convention,
        prep: &Preprocess,
    ) -> Result<RgbImage> {
        Ok(match self {
            ImageInput::Encoded(bytes) => {
                image::decode(&bytes, limits, convention, prep.transparency)?
            }
            ImageInput::Raw {
                width,
                height,
                format,
                data,
            } => image::from_raw(width, height, format, &data, limits, convention, prep)?,
        })
    }

    /// Decoded (within the limits) and preprocessed: pixels ready for the model. CPU work, for
    /// a blocking thread.
    pub fn prepare(
        self,
        limits: &ImageLimits,
        convention: Convention,
        prep: &Preprocess,
    ) -> Result<Pixels> {
        let rgb = cpu_time::charged("decode", || self.decode(limits, convention, prep))?;
        Ok(cpu_time::charged("preprocess", || {
            image::preprocess(&rgb, prep)
        }))
    }

    /// Decoded once, then each region cropped out and preprocessed on its own (at its own aspect
    /// ratio, for a NaFlex model): one row per region, in order, equal to the reference's `crop`
    /// of the same image. A region reaching outside the decoded frame (whose size only decoding
    /// tells, EXIF orientation included) is refused. CPU work, for a blocking thread.
    pub fn prepare_regions(
        self,
        limits: &ImageLimits,
        convention: Convention,
        prep: &Preprocess,
        regions: &[Region],
    ) -> Result<Vec<Pixels>> {
        let rgb = cpu_time::charged("decode", || self.decode(limits, convention, prep))?;
        image::check_within(rgb.width(), rgb.height(), regions).map_err(Error::InvalidArgument)?;
        Ok(regions
            .iter()
            .map(|&r| {
                cpu_time::charged("preprocess", || {
                    image::preprocess(&image::crop(&rgb, r), prep)
                })
            })
            .collect())
    }
}
