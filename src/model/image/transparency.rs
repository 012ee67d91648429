//! What becomes of transparency on the way to RGB, under each [`Convention`].
//!
//! transformers' `convert_to_rgb` composites onto white whatever Pillow reports as transparent
//! (an `A` band, or a `transparency` entry in `info`). Under the processor convention it sees
//! the file as `Image.open` gives it; under the pipeline convention it sees what is left after
//! `load_image`'s `convert("RGB")`, which drops alpha channels and per-entry palette alpha but
//! keeps a single transparent colour. The `image` crate folds every kind of transparency into
//! an alpha channel, which loses those distinctions, so PNG and GIF headers are read here.
//!
//! Pillow's quirks are kept, since the reference has them: a PNG colour key is compared after
//! the conversion to 8 bits with only its low byte (16-bit samples never match their own key
//! unless the low byte happens to), and a 2- or 4-bit gray key is compared unscaled. Where the
//! `image` crate reads a file differently from Pillow, the decoded pixels are first brought in
//! line ([`Prepare`]).

use image::{DynamicImage, RgbImage, Rgba};

use super::{rgb, Convention, ImageError};

/// How one decoded image becomes RGB.
pub(super) struct Rule {
    prepare: Prepare,
    action: Action,
}

/// What the decoded pixels need before the [`Action`] to be what Pillow reads.
enum Prepare {
    Nothing,
    /// The decoder's alpha channel was made from a colour key (PNG `tRNS` on gray or RGB):
    /// Pillow has no such channel, so it is removed.
    StripAlpha,
    /// A GIF whose first frame leaves part of the canvas uncovered: Pillow fills that part with
    /// the transparent index, else index 0; the decoder leaves it transparent black.
    Backdrop {
        frame: Rect,
        fill: [u8; 4],
    },
    /// A TIFF with associated (premultiplied) alpha: Pillow un-premultiplies it on reading (raw
    /// mode `RGBa`), the decoder does not.
    Unpremultiply,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rect {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
}

enum Action {
    /// Alpha, if any, is dropped.
    Drop,
    /// The alpha channel is composited onto white.
    Composite,
    /// Pixels of exactly this 8-bit colour turn white.
    Key([u8; 3]),
}

impl Rule {
    /// Formats without colour keys (WebP, TIFF, BMP): an alpha channel is composited under the
    /// processor convention and dropped under the pipeline convention.
    pub(super) fn alpha_channel(convention: Convention) -> Self {
        let action = match convention {
            Convention::Processor => Action::Composite,
            Convention::Pipeline => Action::Drop,
        };
        Self {
            prepare: Prepare::Nothing,
            action,
        }
    }

    /// The same pixels, with nothing turned white: Pillow's `convert("RGB")` alone.
    pub(super) fn without_compositing(self) -> Self {
        Self {
            action: Action::Drop,
            ..self
        }
    }

    pub(super) fn apply(&self, img: DynamicImage) -> Result<RgbImage, ImageError> {
        let img = match self.prepare {
            Prepare::Nothing => img,
            Prepare::StripAlpha => strip_alpha(img),
            Prepare::Backdrop { frame, fill } => fill_outside(img, frame, fill),
            Prepare::Unpremultiply => unpremultiply(img)?,
        };
        match self.action {
            Action::Drop => rgb::to_rgb(img),
            Action::Composite => rgb::composite_on_white(img),
            Action::Key(key) => {
                let mut img = rgb::to_rgb(img)?;
                for px in img.pixels_mut() {
                    if px.0 == key {
                        px.0 = [255; 3];
                    }
                }
                Ok(img)
            }
        }
    }

    /// A PNG's rule, from its chunks before the first `IDAT`.
    pub(super) fn png(bytes: &[u8], convention: Convention) -> Self {
        let header = PngHeader::read(bytes).unwrap_or_default();
        let alpha = Self::alpha_channel(convention);
        let Some(trns) = header.trns else {
            return alpha;
        };
        let key = |i: usize| trns.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        // Pillow's key, as it compares it with 8-bit pixels.
        let low = |v: u16| (v & 0xff) as u8;
        let keyed = |key: [u8; 3]| Self {
            prepare: Prepare::StripAlpha,
            action: Action::Key(key),
        };
        match (header.color_type, header.bit_depth) {
            // A palette's alpha is real to Pillow ("P" converts to "RGBA"); `convert("RGB")`
            // keeps only a single fully transparent entry, as that entry's colour.
            (3, _) => match convention {
                Convention::Processor => alpha,
                Convention::Pipeline => Self {
                    prepare: Prepare::Nothing,
                    action: palette_key(header.palette, trns).map_or(Action::Drop, Action::Key),
                },
            },
            // 16-bit gray opens as "I;16", whose `convert("RGB")` forgets the key.
            (0, 16) if convention == Convention::Pipeline => Self {
                prepare: Prepare::StripAlpha,
                action: Action::Drop,
            },
            (0, depth) => match key(0) {
                // Pillow scales a 1-bit key to 0 or 255, and no other depth's.
                Some(v) if depth == 1 => keyed([if v & 1 == 1 { 255 } else { 0 }; 3]),
                Some(v) => keyed([low(v); 3]),
                None => alpha,
            },
            (2, _) => match (key(0), key(2), key(4)) {
                (Some(r), Some(g), Some(b)) => keyed([low(r), low(g), low(b)]),
                _ => alpha,
            },
            _ => alpha,
        }
    }

    /// A GIF's rule: its transparent index (for the first frame) is an alpha of 0 to the
    /// processor convention, and that index's colour to the pipeline convention.
    pub(super) fn gif(bytes: &[u8], convention: Convention) -> Self {
        let header = GifHeader::read(bytes);
        let key = header.as_ref().and_then(GifHeader::key);
        let action = match convention {
            Convention::Processor => Action::Composite,
            Convention::Pipeline => key.map_or(Action::Drop, Action::Key),
        };
        let prepare =
            header
                .and_then(|h| h.backdrop())
                .map_or(Prepare::Nothing, |(frame, fill)| Prepare::Backdrop {
                    frame,
                    fill,
                });
        Self { prepare, action }
    }

    /// A TIFF's rule: as [`Rule::alpha_channel`], after un-premultiplying associated alpha.
    pub(super) fn tiff(bytes: &[u8], convention: Convention) -> Self {
        let prepare = if tiff_has_associated_alpha(bytes) {
            Prepare::Unpremultiply
        } else {
            Prepare::Nothing
        };
        Self {
            prepare,
            ..Self::alpha_channel(convention)
        }
    }
}

/// Paints `fill` on an RGBA image outside `frame`.
fn fill_outside(img: DynamicImage, frame: Rect, fill: [u8; 4]) -> DynamicImage {
    let DynamicImage::ImageRgba8(mut img) = img else {
        return img;
    };
    let (x1, y1) = (frame.x + frame.width, frame.y + frame.height);
    for (x, y, px) in img.enumerate_pixels_mut() {
        if x < frame.x || y < frame.y || x >= x1 || y >= y1 {
            *px = Rgba(fill);
        }
    }
    DynamicImage::ImageRgba8(img)
}

/// Pillow's `unpackRGBa`: each colour divided by alpha (`c·255/a`, clipped), transparent
/// pixels black.
fn unpremultiply(img: DynamicImage) -> Result<DynamicImage, ImageError> {
    let DynamicImage::ImageRgba8(mut img) = img else {
        return Err(ImageError::UnsupportedFormat(format!(
            "TIFF with associated alpha in {:?} pixels",
            img.color()
        )));
    };
    for px in img.pixels_mut() {
        let a = u32::from(px[3]);
        for c in &mut px.0[..3] {
            *c = match a {
                0 => 0,
                255 => *c,
                _ => (u32::from(*c) * 255 / a).min(255) as u8,
            };
        }
    }
    Ok(DynamicImage::ImageRgba8(img))
}

/// Whether the first image of a TIFF has associated alpha (`ExtraSamples` = 1).
fn tiff_has_associated_alpha(bytes: &[u8]) -> bool {
    const EXTRA_SAMPLES: u16 = 338;
    let little = match bytes.get(..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return false,
    };
    let u16_at = |at: usize| {
        let b: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
        Some(if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |at: usize| {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let find = || -> Option<bool> {
        let ifd = u32_at(4)? as usize;
        let entries = u16_at(ifd)?;
        (0..usize::from(entries))
            .map(|i| ifd + 2 + 12 * i)
            .find(|&entry| u16_at(entry) == Some(EXTRA_SAMPLES))
            .and_then(|entry| {
                let count = u32_at(entry + 4)?;
                // One or two SHORTs sit in the entry itself, more behind an offset.
                let at = if count <= 2 {
                    entry + 8
                } else {
                    u32_at(entry + 8)? as usize
                };
                Some(u16_at(at)? == 1)
            })
    };
    u16_at(2) == Some(42) && find().unwrap_or(false)
}

fn strip_alpha(img: DynamicImage) -> DynamicImage {
    match img {
        DynamicImage::ImageLumaA8(_) => DynamicImage::ImageLuma8(img.into_luma8()),
        DynamicImage::ImageLumaA16(_) => DynamicImage::ImageLuma16(img.into_luma16()),
        DynamicImage::ImageRgba8(_) => DynamicImage::ImageRgb8(img.into_rgb8()),
        DynamicImage::ImageRgba16(_) => DynamicImage::ImageRgb16(img.into_rgb16()),
        other => other,
    }
}

#[derive(Default)]
struct PngHeader<'a> {
    bit_depth: u8,
    color_type: u8,
    palette: &'a [u8],
    trns: Option<&'a [u8]>,
}

impl<'a> PngHeader<'a> {
    fn read(bytes: &'a [u8]) -> Option<Self> {
        let mut rest = bytes.get(8..)?;
        let mut header = Self::default();
        while rest.len() >= 12 {
            let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
            let kind = &rest[4..8];
            let body = rest.get(8..8usize.checked_add(len)?)?;
            match kind {
                b"IHDR" if body.len() >= 10 => {
                    (header.bit_depth, header.color_type) = (body[8], body[9])
                }
                b"PLTE" => header.palette = body,
                b"tRNS" => header.trns = Some(body),
                b"IDAT" => break,
                _ => {}
            }
            rest = rest.get(12 + len..)?;
        }
        Some(header)
    }
}

/// Pillow keeps a palette `tRNS` with a single zero among 0xff entries as an index (whose
/// colour survives `convert("RGB")`); any other table is per-entry alpha, which it drops.
fn palette_key(palette: &[u8], trns: &[u8]) -> Option<[u8; 3]> {
    let zero = trns.iter().position(|&a| a == 0)?;
    let simple = trns
        .iter()
        .enumerate()
        .all(|(i, &a)| a == 0xff || i == zero);
    let rgb = palette.get(zero * 3..zero * 3 + 3)?;
    simple.then(|| [rgb[0], rgb[1], rgb[2]])
}

/// What Pillow reads of a GIF before its first image: the canvas, that image's place on it, the
/// palette it uses and its transparent index.
struct GifHeader<'a> {
    canvas: (u32, u32),
    frame: Rect,
    palette: &'a [u8],
    transparent: Option<usize>,
}

impl<'a> GifHeader<'a> {
    /// The logical screen, the global palette, the Graphic Control Extension before the first
    /// image, and that image's descriptor with its local palette if it has one.
    fn read(bytes: &'a [u8]) -> Option<Self> {
        let u16_at = |at: usize| Some(u16::from_le_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]));
        let canvas = (u32::from(u16_at(6)?), u32::from(u16_at(8)?));
        let flags = *bytes.get(10)?;
        let mut at = 13;
        let mut palette = &[][..];
        if flags & 0x80 != 0 {
            let len = 3 << ((flags & 7) + 1);
            palette = bytes.get(at..at + len)?;
            at += len;
        }
        let mut transparent = None;
        loop {
            match *bytes.get(at)? {
                0x21 => {
                    let label = *bytes.get(at + 1)?;
                    at += 2;
                    if label == 0xf9 && *bytes.get(at)? >= 4 && bytes.get(at + 1)? & 1 != 0 {
                        transparent = Some(usize::from(*bytes.get(at + 4)?));
                    }
                    // Skip the extension's sub-blocks.
                    while *bytes.get(at)? != 0 {
                        at += usize::from(bytes[at]) + 1;
                    }
                    at += 1;
                }
                0x2c => {
                    let frame = Rect {
                        x: u32::from(u16_at(at + 1)?),
                        y: u32::from(u16_at(at + 3)?),
                        width: u32::from(u16_at(at + 5)?),
                        height: u32::from(u16_at(at + 7)?),
                    };
                    let local = *bytes.get(at + 9)?;
                    if local & 0x80 != 0 {
                        palette = bytes.get(at + 10..at + 10 + (3 << ((local & 7) + 1)))?;
                    }
                    return Some(Self {
                        canvas,
                        frame,
                        palette,
                        transparent,
                    });
                }
                _ => return None,
            }
        }
    }

    fn color(&self, index: usize) -> Option<[u8; 3]> {
        let rgb = self.palette.get(index * 3..index * 3 + 3)?;
        Some([rgb[0], rgb[1], rgb[2]])
    }

    /// The colour of the transparent index.
    fn key(&self) -> Option<[u8; 3]> {
        self.color(self.transparent?)
    }

    /// Where the first image leaves the canvas uncovered: the fill Pillow gives it there (the
    /// transparent index, transparent; else index 0, opaque).
    fn backdrop(&self) -> Option<(Rect, [u8; 4])> {
        let f = self.frame;
        let covers = f.x == 0 && f.y == 0 && f.width >= self.canvas.0 && f.height >= self.canvas.1;
        if covers {
            return None;
        }
        let [r, g, b] = self.color(self.transparent.unwrap_or(0)).unwrap_or([0; 3]);
        let alpha = if self.transparent.is_some() { 0 } else { 255 };
        Some((f, [r, g, b, alpha]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_trns_rules() {
        let pal = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(palette_key(&pal, &[0xff, 0]), Some([4, 5, 6]));
        assert_eq!(palette_key(&pal, &[0]), Some([1, 2, 3]));
        assert_eq!(palette_key(&pal, &[0, 0x80]), None);
        assert_eq!(palette_key(&pal, &[0, 0]), None);
    }
}
