//! Regions: rectangles of a decoded frame, each classified on its own.
//!
//! The reference is Pillow's `Image.open(f).crop((x, y, x + width, y + height))` handed to the
//! processor (under the pipeline convention, `load_image(f).crop(..)`; a raw frame, the numpy
//! slice `a[y:y+h, x:x+w]`). `crop` loads the whole image first and keeps its mode, palette and
//! transparency, and every rule that turns a mode into RGB works pixel by pixel, so cropping the
//! RGB8 frame this module's caller already decoded gives the same pixels bit for bit. Pillow pads
//! a box that reaches outside the image with zeros; here such a box is refused instead.

use image::{imageops, RgbImage};

/// A rectangle in pixels of the decoded frame (after EXIF orientation under the pipeline
/// convention): Pillow's crop box is `(x, y, x + width, y + height)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "x={} y={} {}x{}",
            self.x, self.y, self.width, self.height
        )
    }
}

/// Checks what can be checked before decoding: how many regions (at most `max`, the
/// `--max-regions` flag) and that none is empty.
pub fn check_shape(regions: &[Region], max: usize) -> Result<(), String> {
    if regions.len() > max {
        return Err(format!(
            "{} regions exceed the limit of {max} per frame (--max-regions)",
            regions.len()
        ));
    }
    if let Some((i, r)) = regions
        .iter()
        .enumerate()
        .find(|(_, r)| r.width == 0 || r.height == 0)
    {
        return Err(format!(
            "region {i} is empty ({}x{}): width and height must be at least 1",
            r.width, r.height
        ));
    }
    Ok(())
}

/// Checks, once the frame is decoded and its size known, that every region lies inside it. An
/// `x + width` that overflows `u32` is outside too.
pub fn check_within(width: u32, height: u32, regions: &[Region]) -> Result<(), String> {
    let inside =
        |start: u32, len: u32, limit: u32| start.checked_add(len).is_some_and(|end| end <= limit);
    match regions
        .iter()
        .enumerate()
        .find(|(_, r)| !inside(r.x, r.width, width) || !inside(r.y, r.height, height))
    {
        Some((i, r)) => Err(format!(
            "region {i} ({r}) reaches outside the {width}x{height} frame"
        )),
        None => Ok(()),
    }
}

/// The pixels of `r` (checked with [`check_within`] first), copied out of `rgb`.
pub fn crop(rgb: &RgbImage, r: Region) -> RgbImage {
    imageops::crop_imm(rgb, r.x, r.y, r.width, r.height).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(x: u32, y: u32, width: u32, height: u32) -> Region {
        Region {
            x,
            y,
            width,
            height,
        }
    }

    #[test]
    fn too_many_regions_are_refused_with_the_flag_named() {
        let regions = vec![region(0, 0, 1, 1); 17];
        assert_eq!(
            check_shape(&regions, 16).unwrap_err(),
            "17 regions exceed the limit of 16 per frame (--max-regions)"
        );
        assert_eq!(check_shape(&regions[..16], 16), Ok(()));
        assert_eq!(check_shape(&[], 16), Ok(()));
    }

    #[test]
    fn an_empty_region_is_refused_by_its_index() {
        let regions = [region(0, 0, 5, 5), region(3, 3, 1, 1), region(0, 0, 0, 40)];
        assert_eq!(
            check_shape(&regions, 16).unwrap_err(),
            "region 2 is empty (0x40): width and height must be at least 1"
        );
        assert_eq!(
            check_shape(&[region(9, 9, 7, 0)], 16).unwrap_err(),
            "region 0 is empty (7x0): width and height must be at least 1"
        );
    }

    #[test]
    fn a_region_outside_the_frame_is_refused() {
        let regions = [region(0, 0, 640, 427), region(600, 0, 100, 80)];
        assert_eq!(
            check_within(640, 427, &regions).unwrap_err(),
            "region 1 (x=600 y=0 100x80) reaches outside the 640x427 frame"
        );
        assert_eq!(
            check_within(640, 427, &[region(0, 400, 10, 28)]).unwrap_err(),
            "region 0 (x=0 y=400 10x28) reaches outside the 640x427 frame"
        );
        // Touching the right and bottom edges is inside.
        assert_eq!(check_within(640, 427, &[region(639, 426, 1, 1)]), Ok(()));
        assert_eq!(check_within(640, 427, &regions[..1]), Ok(()));
    }

    #[test]
    fn an_overflowing_region_is_outside() {
        let huge = region(u32::MAX, 0, 2, 1);
        assert_eq!(
            check_within(640, 427, &[huge]).unwrap_err(),
            format!(
                "region 0 (x={} y=0 2x1) reaches outside the 640x427 frame",
                u32::MAX
            )
        );
        assert!(check_within(640, 427, &[region(1, u32::MAX - 1, 1, 5)]).is_err());
    }

    #[test]
    fn crop_copies_exactly_the_rectangle() {
        let rgb = RgbImage::from_fn(7, 5, |x, y| {
            image::Rgb([x as u8, y as u8, (x * 10 + y) as u8])
        });
        let r = region(2, 1, 4, 3);
        let out = crop(&rgb, r);
        assert_eq!(out.dimensions(), (4, 3));
        for (x, y, p) in out.enumerate_pixels() {
            assert_eq!(
                p.0,
                [x as u8 + 2, y as u8 + 1, ((x + 2) * 10 + y + 1) as u8]
            );
        }
        assert_eq!(crop(&rgb, region(0, 0, 7, 5)), rgb);
        assert_eq!(crop(&rgb, region(6, 4, 1, 1)).as_raw(), &vec![6, 4, 64]);
    }
}
