//! The one place the reference turns pixels white: a colour-keyed transparency that survives
//! `convert("RGB")`.
//!
//! For a palette image whose transparency is a single index (a GIF's, or a PNG `tRNS` with
//! exactly one zero among 0xff entries), and for 8-bit gray or RGB PNGs with a `tRNS` colour
//! key, Pillow's `convert("RGB")` keeps `info["transparency"]` as an RGB colour. The
//! processor's `convert_to_rgb` then sees it, masks every pixel of exactly that colour
//! (wherever it comes from) and composites onto white, so those pixels become (255, 255, 255).
//! Any other transparency (alpha channels, per-entry palette alpha) is dropped instead.
//!
//! The `image` crate folds transparency into an alpha channel, which loses that distinction,
//! so the key is read from the file's own header chunks.

use image::RgbImage;

/// Paints every pixel of colour `key` white.
pub(super) fn apply(img: &mut RgbImage, key: [u8; 3]) {
    for px in img.pixels_mut() {
        if px.0 == key {
            px.0 = [255; 3];
        }
    }
}

/// The colour key of a PNG, from the chunks before the first `IDAT`.
pub(super) fn png(bytes: &[u8]) -> Option<[u8; 3]> {
    let mut rest = bytes.get(8..)?;
    let (mut bit_depth, mut color_type, mut palette) = (0, 0, &[][..]);
    while rest.len() >= 12 {
        let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
        let kind = &rest[4..8];
        let body = rest.get(8..8usize.checked_add(len)?)?;
        match kind {
            b"IHDR" if body.len() >= 10 => (bit_depth, color_type) = (body[8], body[9]),
            b"PLTE" => palette = body,
            b"tRNS" => return png_trns(bit_depth, color_type, palette, body),
            b"IDAT" => return None,
            _ => {}
        }
        rest = rest.get(12 + len..)?;
    }
    None
}

fn png_trns(bit_depth: u8, color_type: u8, palette: &[u8], trns: &[u8]) -> Option<[u8; 3]> {
    match (color_type, bit_depth) {
        // Pillow keeps a single fully transparent entry as an index, other tables as bytes
        // (which `convert("RGB")` deletes).
        (3, _) => {
            let zero = trns.iter().position(|&a| a == 0)?;
            let simple = trns
                .iter()
                .enumerate()
                .all(|(i, &a)| a == 0xff || i == zero);
            let rgb = palette.get(zero * 3..zero * 3 + 3)?;
            simple.then(|| [rgb[0], rgb[1], rgb[2]])
        }
        (0, 8) if trns.len() >= 2 => {
            let v = u8::try_from(u16::from_be_bytes([trns[0], trns[1]])).ok()?;
            Some([v; 3])
        }
        (2, 8) if trns.len() >= 6 => {
            let c = |i: usize| u8::try_from(u16::from_be_bytes([trns[i], trns[i + 1]])).ok();
            Some([c(0)?, c(2)?, c(4)?])
        }
        _ => None,
    }
}

/// The colour of a GIF's transparent index for its first frame: the Graphic Control
/// Extension before the first image, looked up in the local palette if it has one.
pub(super) fn gif(bytes: &[u8]) -> Option<[u8; 3]> {
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
                let local = *bytes.get(at + 9)?;
                if local & 0x80 != 0 {
                    palette = bytes.get(at + 10..at + 10 + (3 << ((local & 7) + 1)))?;
                }
                let rgb = palette.get(transparent? * 3..)?.get(..3)?;
                return Some([rgb[0], rgb[1], rgb[2]]);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_trns_rules() {
        let pal = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(png_trns(8, 3, &pal, &[0xff, 0]), Some([4, 5, 6]));
        assert_eq!(png_trns(8, 3, &pal, &[0]), Some([1, 2, 3]));
        assert_eq!(png_trns(8, 3, &pal, &[0, 0x80]), None);
        assert_eq!(png_trns(8, 3, &pal, &[0, 0]), None);
        assert_eq!(png_trns(8, 2, &[], &[0, 1, 0, 2, 0, 3]), Some([1, 2, 3]));
        assert_eq!(png_trns(16, 2, &[], &[0, 1, 0, 2, 0, 3]), None);
    }
}
