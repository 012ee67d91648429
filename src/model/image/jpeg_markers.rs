//! A walk over a JPEG's markers, before libjpeg sees the file: the frame size (for admission)
//! and the number of scans (for `--max-jpeg-scans`).
//!
//! libjpeg decodes every scan of a progressive JPEG into its coefficient buffer, and each scan
//! visits every block of its components, even a scan whose data is one end-of-band run. A small
//! file of thousands of such scans costs seconds of CPU per copy (0.5 MB, 4000×4000: ~10 s). The
//! `mozjpeg` crate does not expose libjpeg's progress monitor, through which djpeg `-maxscans`
//! and TurboJPEG's `TJPARAM_SCANLIMIT` stop such files, so the scans are counted here, the way
//! libjpeg reaches them: segments are skipped by their length, and a scan's entropy-coded data
//! ends at the first 0xFF followed by a byte that is not 0x00 (a stuffed 0xFF), RST0–7 or 0xFF
//! (fill before a marker).

/// What the walk found. It stops at EOI, at the end of the data, or at the first malformed
/// segment: what follows is libjpeg's to judge (and refuse) when it decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Layout {
    /// Width and height from the first frame header (SOFn), if there is one.
    pub frame: Option<(u32, u32)>,
    /// SOS markers, up to the count the walk was asked to stop after.
    pub scans: usize,
}

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const TEM: u8 = 0x01;

/// Walks `bytes` and counts scans until there are more than `stop_after` (the count is then
/// `stop_after + 1`); `stop_after = 0` stops at the frame header, for its size alone.
pub(super) fn walk(bytes: &[u8], stop_after: usize) -> Layout {
    let mut layout = Layout::default();
    if bytes.get(..2) != Some(&[0xFF, SOI]) {
        return layout;
    }
    let mut at = 2;
    while let Some((marker, after)) = next_marker(bytes, at) {
        at = after;
        match marker {
            EOI => break,
            // Standalone markers: no length follows.
            TEM | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = bytes
            .get(at..at + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            break;
        };
        if len < 2 {
            // libjpeg reads a length under 2 as an empty segment and reads on (for an APPn or
            // COM; any other such segment fails the decode): so does the walk, or the frame and
            // scans after it would go unseen (found by `fuzz/`, target `decode`).
            at += 2;
            continue;
        }
        if at + len > bytes.len() {
            break;
        }
        let segment = &bytes[at + 2..at + len];
        at += len;
        if is_frame_header(marker) && layout.frame.is_none() {
            let Some(s) = segment.get(1..5) else { break };
            let height = u16::from_be_bytes([s[0], s[1]]);
            let width = u16::from_be_bytes([s[2], s[3]]);
            layout.frame = Some((u32::from(width), u32::from(height)));
            if stop_after == 0 {
                break;
            }
        }
        if marker == SOS {
            layout.scans += 1;
            if layout.scans > stop_after {
                break;
            }
            at = end_of_entropy_data(bytes, at);
        }
    }
    layout
}

/// The next marker at or after `at` and the offset just past it; `None` at the end of the data.
/// Bytes before it that are not a marker are skipped, as libjpeg's `next_marker` skips them (with
/// a warning, and decodes on): a walk that stopped there would miss the frame, or let one stray
/// byte hide every scan after it from `--max-jpeg-scans` (found by `fuzz/`, target `decode`).
fn next_marker(bytes: &[u8], mut at: usize) -> Option<(u8, usize)> {
    loop {
        at += bytes.get(at..)?.iter().position(|&b| b == 0xFF)?;
        while *bytes.get(at)? == 0xFF {
            at += 1;
        }
        // FF 00 is not a marker: libjpeg discards it and looks further.
        if bytes[at] != 0x00 {
            return Some((bytes[at], at + 1));
        }
        at += 1;
    }
}

/// Where a scan's entropy-coded data starting at `at` ends: the 0xFF of the next marker (or the
/// end of the data).
fn end_of_entropy_data(bytes: &[u8], mut at: usize) -> usize {
    loop {
        let Some(ff) = bytes[at..].iter().position(|&b| b == 0xFF) else {
            return bytes.len();
        };
        let mut next = at + ff + 1;
        // A run of 0xFF is fill: the byte after the run decides.
        while bytes.get(next) == Some(&0xFF) {
            next += 1;
        }
        match bytes.get(next) {
            None => return bytes.len(),
            Some(0x00 | 0xD0..=0xD7) => at = next + 1,
            Some(_) => return next - 1,
        }
    }
}

/// SOF0–SOF15, except DHT (C4), JPG (C8) and DAC (CC), which share the range.
fn is_frame_header(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(marker: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFF, marker];
        out.extend_from_slice(&(body.len() as u16 + 2).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// SOI, a 640×480 progressive frame header, `scans` scans of `data`, EOI.
    fn jpeg_with_scans(scans: usize, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0xFF, SOI];
        out.extend(segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"));
        out.extend(segment(0xC2, &[8, 0x01, 0xE0, 0x02, 0x80, 1, 1, 0x11, 0]));
        for _ in 0..scans {
            out.extend(segment(SOS, &[1, 1, 0, 1, 63, 0]));
            out.extend_from_slice(data);
        }
        out.extend_from_slice(&[0xFF, EOI]);
        out
    }

    #[test]
    fn counts_scans_and_reads_the_frame() {
        let layout = walk(&jpeg_with_scans(10, &[0x12, 0x34]), usize::MAX);
        assert_eq!(layout.frame, Some((640, 480)));
        assert_eq!(layout.scans, 10);
    }

    #[test]
    fn stuffing_restarts_fill_and_thumbnails_do_not_count() {
        // Entropy data with a stuffed 0xFF before 0xDA's value, a stuffed 0xFF after fill
        // (FF FF 00: libjpeg reads it as one data byte), a restart marker, and fill before the
        // next real marker; and an APP1 segment holding what an EXIF thumbnail holds, SOS
        // markers of its own.
        let data = [
            0x12, 0xFF, 0x00, 0xDA, 0xFF, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56, 0xFF, 0xFF,
        ];
        let mut bytes = jpeg_with_scans(7, &data);
        let thumbnail = segment(0xE1, b"Exif\0\0\xFF\xD8\xFF\xDA\x00\x02\xFF\xDA\xFF\xD9");
        bytes.splice(2..2, thumbnail);
        let naive = bytes.windows(2).filter(|w| w == &[0xFF, SOS]).count();
        assert_eq!(naive, 9, "a pair count is fooled");
        // A walk that ends entropy data at the first 0xFF not followed by 0x00 is fooled too:
        // it would read FF FF 00 as fill before a marker 0x00.
        let layout = walk(&bytes, usize::MAX);
        assert_eq!(layout.scans, 7);
        assert_eq!(layout.frame, Some((640, 480)));
    }

    #[test]
    fn stops_after_the_limit_and_at_the_frame_when_asked() {
        let bytes = jpeg_with_scans(1000, &[0x00]);
        assert_eq!(walk(&bytes, 100).scans, 101);
        let header = walk(&bytes, 0);
        assert_eq!(
            header,
            Layout {
                frame: Some((640, 480)),
                scans: 0
            }
        );
    }

    #[test]
    fn bytes_between_segments_are_skipped_as_libjpeg_skips_them() {
        // A stray byte (and a stuffed FF 00) before every scan: libjpeg warns and decodes every
        // scan, so the walk must count them all, or --max-jpeg-scans is bypassed.
        let bytes = jpeg_with_scans(1000, &[0x00]);
        let sos = [0xFF, SOS];
        let mut stray = Vec::new();
        for (i, w) in bytes.windows(2).enumerate() {
            if w == sos {
                stray.extend_from_slice(&[0x17, 0xFF, 0x00]);
            }
            stray.push(bytes[i]);
        }
        stray.push(*bytes.last().unwrap());
        assert_eq!(walk(&stray, 100).scans, 101);
        let layout = walk(&stray, usize::MAX);
        assert_eq!((layout.frame, layout.scans), (Some((640, 480)), 1000));
    }

    #[test]
    fn a_length_under_two_is_an_empty_segment_as_in_libjpeg() {
        let mut bytes = jpeg_with_scans(200, &[0x00]);
        bytes.splice(2..2, [0xFF, 0xE0, 0x00, 0x01, 0x2B, 0x10]);
        assert_eq!(walk(&bytes, 100).scans, 101);
        assert_eq!(walk(&bytes, 0).frame, Some((640, 480)));
    }

    #[test]
    fn garbage_and_truncation_end_the_walk_without_panicking() {
        assert_eq!(walk(b"", 10), Layout::default());
        assert_eq!(walk(b"\x89PNG\r\n", 10), Layout::default());
        let bytes = jpeg_with_scans(5, &[0x01, 0x02]);
        for cut in 0..bytes.len() {
            let layout = walk(&bytes[..cut], usize::MAX);
            assert!(layout.scans <= 5);
        }
        // A segment length running past the end, and one shorter than its own length field.
        assert_eq!(walk(&[0xFF, SOI, 0xFF, 0xE0, 0xFF, 0xFF, 0], 10).scans, 0);
        assert_eq!(walk(&[0xFF, SOI, 0xFF, 0xE0, 0x00, 0x01], 10).scans, 0);
    }

    #[test]
    fn real_encoders_write_few_scans() {
        let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 7]));
        for progressive in [false, true] {
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
            c.set_size(64, 48);
            if progressive {
                c.set_progressive_mode();
            }
            let mut c = c.start_compress(Vec::new()).unwrap();
            c.write_scanlines(img.as_raw()).unwrap();
            let bytes = c.finish().unwrap();
            let layout = walk(&bytes, usize::MAX);
            assert_eq!(layout.frame, Some((64, 48)));
            // mozjpeg's defaults write a few progressive scans even unasked.
            assert!(
                (1..=20).contains(&layout.scans),
                "{progressive}: {layout:?}"
            );
        }
    }
}
