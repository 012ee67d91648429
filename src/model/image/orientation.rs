//! EXIF orientation, found the way Pillow's `getexif()` finds it and applied the way
//! `ImageOps.exif_transpose` (called by transformers' `load_image`) applies it.

use image::metadata::Orientation;
use image::{DynamicImage, RgbImage};

/// Pillow falls back to XMP's `tiff:Orientation` when EXIF has no orientation tag: the first
/// `tiff:Orientation="N"` or `tiff:Orientation>N` in the packet.
pub(super) fn from_xmp(xmp: &[u8]) -> Option<Orientation> {
    const KEY: &[u8] = b"tiff:Orientation";
    let mut rest = xmp;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        rest = &rest[at + KEY.len()..];
        let digit = match rest {
            [b'=', b'"', d, ..] | [b'>', d, ..] if d.is_ascii_digit() => *d,
            _ => continue,
        };
        return Orientation::from_exif(digit - b'0');
    }
    None
}

/// Turns the image upright.
pub(super) fn apply(img: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return img;
    }
    let mut img = DynamicImage::ImageRgb8(img);
    img.apply_orientation(orientation);
    img.into_rgb8()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmp_attribute_and_element_forms() {
        let attr = br#"<rdf:Description tiff:Orientation="6"/>"#;
        let elem = b"<tiff:Orientation>8</tiff:Orientation>";
        assert_eq!(from_xmp(attr), Some(Orientation::Rotate90));
        assert_eq!(from_xmp(elem), Some(Orientation::Rotate270));
        assert_eq!(from_xmp(b"tiff:Orientation: none"), None);
    }
}
