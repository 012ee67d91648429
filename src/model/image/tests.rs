//! Hostile and malformed input: every case must come back as a clear error, never a panic or
//! an abort. Inputs are built here so the tests need no files.

use image::{ImageEncoder, RgbImage};

use super::*;
use crate::tools::attacks::{crc32, icc_profile_bomb, png_with_chunk};

fn photo_like(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7 + y) as u8, (x ^ y) as u8, (x * y / 3) as u8])
    })
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img,
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    c.set_size(img.width() as usize, img.height() as usize);
    let mut c = c.start_compress(Vec::new()).unwrap();
    c.write_scanlines(img.as_raw()).unwrap();
    c.finish().unwrap()
}

/// A valid PNG whose IHDR claims `width`×`height` (with a correct CRC) over 1×1 of data.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(&photo_like(1, 1));
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn decode_err(bytes: &[u8]) -> ImageError {
    let err = decode(
        bytes,
        &ImageLimits::default(),
        Convention::Processor,
        Transparency::Composite,
    )
    .expect_err("must be rejected");
    assert!(!err.to_string().is_empty());
    err
}

#[test]
fn round_trip_decodes() {
    let img = photo_like(64, 48);
    for convention in [Convention::Processor, Convention::Pipeline] {
        let limits = ImageLimits::default();
        assert_eq!(
            decode(&png(&img), &limits, convention, Transparency::Composite).unwrap(),
            img
        );
        let from_jpeg = decode(&jpeg(&img), &limits, convention, Transparency::Composite).unwrap();
        assert_eq!(from_jpeg.dimensions(), (64, 48));
    }
}

/// An RGBA PNG of one opaque, one half-transparent and one fully transparent pixel.
fn rgba_png() -> Vec<u8> {
    let mut out = Vec::new();
    let pixels = [10, 20, 30, 255, 10, 20, 30, 128, 10, 20, 30, 0];
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&pixels, 3, 1, image::ExtendedColorType::Rgba8)
        .unwrap();
    out
}

#[test]
fn conventions_treat_alpha_differently() {
    let limits = ImageLimits::default();
    // Pillow's alpha_composite onto white: 10·128/255 + 255·127/255 = 132.06 -> 132, etc.
    let processor = decode(
        &rgba_png(),
        &limits,
        Convention::Processor,
        Transparency::Composite,
    )
    .unwrap();
    assert_eq!(
        processor.as_raw(),
        &[10, 20, 30, 132, 137, 142, 255, 255, 255]
    );
    let pipeline = decode(
        &rgba_png(),
        &limits,
        Convention::Pipeline,
        Transparency::Composite,
    )
    .unwrap();
    assert_eq!(pipeline.as_raw(), &[10, 20, 30, 10, 20, 30, 10, 20, 30]);
    // Raw RGBA frames: numpy's float compositing, rounded half to even (PIL backend), or
    // torch's in f32, truncated after scaling by 255.999 (torchvision backend).
    let raw = [10, 20, 30, 255, 10, 20, 30, 128, 10, 20, 30, 0, 1, 1, 1, 52];
    let frame = |convention, processor| {
        let prep = Preprocess {
            processor,
            ..Preprocess::siglip(4)
        };
        from_raw(4, 1, RawFormat::Rgba8, &raw, &limits, convention, &prep).unwrap()
    };
    let pil = frame(Convention::Processor, ImageProcessor::Pil);
    assert_eq!(
        pil.as_raw(),
        &[10, 20, 30, 132, 137, 142, 255, 255, 255, 203, 203, 203]
    );
    // c = 1, α = 52: numpy's 52/255·1 + 203/255·255 = 203.2 rounds to 203; torch's
    // (1/255·52/255 + 203/255)·255.999 = 204.000003 truncates to 204 (f32 gives 204.0 too).
    let torchvision = frame(Convention::Processor, ImageProcessor::Torchvision);
    assert_eq!(
        torchvision.as_raw(),
        &[10, 20, 30, 132, 137, 142, 255, 255, 255, 204, 204, 204]
    );
    for processor in [ImageProcessor::Pil, ImageProcessor::Torchvision] {
        let pipeline = frame(Convention::Pipeline, processor);
        assert_eq!(
            pipeline.as_raw(),
            &[10, 20, 30, 10, 20, 30, 10, 20, 30, 1, 1, 1]
        );
    }
}

#[test]
fn convention_names() {
    for c in [Convention::Processor, Convention::Pipeline] {
        assert_eq!(c.name().parse::<Convention>(), Ok(c));
    }
    assert_eq!(Convention::default(), Convention::Processor);
    assert!("exif"
        .parse::<Convention>()
        .unwrap_err()
        .contains("processor or pipeline"));
    for p in [ImageProcessor::Pil, ImageProcessor::Torchvision] {
        assert_eq!(p.name().parse::<ImageProcessor>(), Ok(p));
    }
    assert_eq!(ImageProcessor::default(), ImageProcessor::Pil);
    assert!("tv"
        .parse::<ImageProcessor>()
        .unwrap_err()
        .contains("pil or torchvision"));
}

#[test]
fn opaque_rgba_round_trips() {
    let img = photo_like(16, 16);
    let rgba: Vec<u8> = img.pixels().flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    for convention in [Convention::Processor, Convention::Pipeline] {
        for processor in [ImageProcessor::Pil, ImageProcessor::Torchvision] {
            let frame = from_raw(
                16,
                16,
                RawFormat::Rgba8,
                &rgba,
                &ImageLimits::default(),
                convention,
                &Preprocess {
                    processor,
                    ..Preprocess::siglip(16)
                },
            );
            assert_eq!(frame.unwrap(), img, "{convention} {processor}");
        }
    }
}

#[test]
fn empty_and_non_images() {
    assert!(matches!(decode_err(b""), ImageError::Empty));
    assert!(matches!(
        decode_err(b"hello, not an image\n"),
        ImageError::NotAnImage
    ));
    let pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n";
    assert!(matches!(decode_err(pdf), ImageError::NotAnImage));
    let ico = [0, 0, 1, 0, 1, 0, 16, 16, 0, 0, 1, 0, 32, 0, 0, 0, 0, 0];
    assert!(matches!(decode_err(&ico), ImageError::UnsupportedFormat(_)));
}

#[test]
fn truncated_jpeg_is_rejected_like_pillow() {
    let full = jpeg(&photo_like(200, 150));
    for cut in [full.len() * 6 / 10, full.len() - 2, 400] {
        let err = decode_err(&full[..cut]);
        assert!(
            matches!(err, ImageError::Truncated(_)),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn corrupt_jpeg_is_an_error_not_a_panic() {
    let mut bytes = jpeg(&photo_like(200, 150));
    let body = bytes.len() / 3;
    bytes[body..body + 300]
        .iter_mut()
        .for_each(|b| *b = b.wrapping_mul(31) ^ 0x5a);
    bytes[2..40].fill(0xff); // breaks the header too
    decode_err(&bytes);
    decode_err(&[0xff, 0xd8, 0xff]);
}

#[test]
fn truncated_and_corrupt_png() {
    let full = png(&photo_like(200, 150));
    for cut in [full.len() * 6 / 10, full.len() - 12, 40] {
        decode_err(&full[..cut]);
    }
    let mut bad = full.clone();
    bad[16..33].fill(0xff);
    decode_err(&bad);
}

#[test]
fn decompression_bombs_are_refused_before_allocating() {
    let err = decode_err(&png_claiming(100_000, 100_000));
    assert_eq!(
        err.to_string(),
        "image of 100000x100000 pixels exceeds the limit of 50000000 pixels (--max-image-pixels)"
    );
    assert!(matches!(
        decode_err(&png_claiming(30_000, 10)),
        ImageError::SideTooLong { .. }
    ));

    let mut bytes = jpeg(&photo_like(16, 16));
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xff, 0xc0] || w == [0xff, 0xc2])
        .unwrap();
    bytes[sof + 5..sof + 9].copy_from_slice(&[0xea, 0x60, 0xea, 0x60]); // 60000x60000
    assert!(matches!(
        decode_err(&bytes),
        ImageError::TooManyPixels { .. }
    ));
}

#[test]
fn byte_limit() {
    let limits = ImageLimits {
        max_bytes: 10,
        ..ImageLimits::default()
    };
    let err = decode(
        &png(&photo_like(4, 4)),
        &limits,
        Convention::Processor,
        Transparency::Composite,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::TooLarge { max: 10, .. }));
}

#[test]
fn raw_frames() {
    let limits = ImageLimits::default();
    let rgba = [1, 2, 3, 0, 4, 5, 6, 255];
    let raw = |w, h, format, data: &[u8]| {
        from_raw(
            w,
            h,
            format,
            data,
            &limits,
            Convention::Pipeline,
            &Preprocess::siglip(2),
        )
    };
    let img = raw(2, 1, RawFormat::Rgba8, &rgba).unwrap();
    assert_eq!(img.as_raw(), &[1, 2, 3, 4, 5, 6]);
    let rgb = raw(2, 1, RawFormat::Rgb8, &[1, 2, 3, 4, 5, 6]).unwrap();
    assert_eq!(rgb, img);
    let short = raw(2, 2, RawFormat::Rgb8, &[0; 11]).unwrap_err();
    assert!(matches!(short, ImageError::BadRawFrame(_)), "{short}");
    let empty = raw(0, 2, RawFormat::Rgb8, &[]).unwrap_err();
    assert!(matches!(empty, ImageError::BadRawFrame(_)), "{empty}");
    let huge = raw(100_000, 100_000, RawFormat::Rgb8, &[]).unwrap_err();
    assert!(matches!(huge, ImageError::TooManyPixels { .. }), "{huge}");
}

#[test]
fn preprocess_layout_and_values() {
    let img = RgbImage::from_pixel(224, 224, image::Rgb([0, 255, 51]));
    let out = preprocess(&img, &Preprocess::siglip(224)).values;
    let plane = 224 * 224;
    assert_eq!(out.len(), 3 * plane);
    assert_eq!((out[0], out[plane], out[2 * plane]), (-1.0, 1.0, -0.6));
    let resized = preprocess(&photo_like(37, 500), &Preprocess::siglip(16)).values;
    assert_eq!(resized.len(), 3 * 16 * 16);
}

/// A progressive JPEG as an encoder writes it: about 10 scans.
fn progressive_jpeg(img: &RgbImage) -> Vec<u8> {
    let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    c.set_size(img.width() as usize, img.height() as usize);
    c.set_progressive_mode();
    let mut c = c.start_compress(Vec::new()).unwrap();
    c.write_scanlines(img.as_raw()).unwrap();
    c.finish().unwrap()
}

#[test]
fn jpeg_scans_over_the_limit_are_refused_before_decoding() {
    let bytes = progressive_jpeg(&photo_like(40, 30));
    let scans = jpeg_markers::walk(&bytes, usize::MAX).scans;
    assert!(scans > 2, "{scans} scans");
    let at = |max_jpeg_scans| ImageLimits {
        max_jpeg_scans,
        ..ImageLimits::default()
    };
    let err = decode(
        &bytes,
        &at(scans - 1),
        Convention::Processor,
        Transparency::Composite,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::TooManyScans { .. }), "{err}");
    assert!(err.to_string().contains("--max-jpeg-scans"), "{err}");
    assert!(!crate::error::Error::from(err).is_limit());
    let img = decode(
        &bytes,
        &at(scans),
        Convention::Processor,
        Transparency::Composite,
    )
    .unwrap();
    assert_eq!(img.dimensions(), (40, 30));
}

#[test]
fn an_icc_profile_bomb_costs_at_most_the_byte_limit() {
    // 64 MiB of profile in about 420 KB: inflated up to --max-image-bytes (32 MiB), then
    // dropped by the PNG decoder; the image itself decodes.
    let img = photo_like(8, 8);
    let bomb = png_with_chunk(&png(&img), b"iCCP", &icc_profile_bomb(64 << 20));
    assert!(bomb.len() < 600_000, "{} bytes", bomb.len());
    let started = std::time::Instant::now();
    let decoded = decode(
        &bomb,
        &ImageLimits::default(),
        Convention::Processor,
        Transparency::Composite,
    )
    .unwrap();
    assert_eq!(decoded, img);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn metadata_over_the_decoders_limit_is_invalid_not_overload() {
    // A profile under the bound, then a text chunk that passes it.
    let limits = ImageLimits {
        max_bytes: 1 << 20,
        ..ImageLimits::default()
    };
    let mut text = b"k\0".to_vec();
    text.extend([b'v'; 200_000]);
    let bytes = png_with_chunk(&png(&photo_like(8, 8)), b"tEXt", &text);
    let bytes = png_with_chunk(&bytes, b"iCCP", &icc_profile_bomb(900_000));
    let err = decode(
        &bytes,
        &limits,
        Convention::Processor,
        Transparency::Composite,
    )
    .unwrap_err();
    assert!(matches!(err, ImageError::MemoryLimit(_)), "{err}");
    assert!(err.to_string().starts_with("image is corrupt"), "{err}");
    assert!(!crate::error::Error::from(err).is_limit());
}

/// Found by `fuzz/` (target `decode`): a 7×5 progressive JPEG with stray bytes between its
/// segments, which libjpeg skips (with a warning) and decodes. The header walk stopped at them and
/// refused it ("no frame header"), and would have missed the scans behind them.
#[rustfmt::skip]
const JPEG_WITH_STRAY_BYTES: &[u8] = &[
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01,
    0x00, 0x01, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x10, 0x0b, 0x0c, 0x0e, 0x0c, 0x0a, 0x10,
    0x0e, 0x0d, 0x0e, 0x12, 0x11, 0x10, 0x13, 0x18, 0x28, 0x1a, 0x18, 0x16, 0x16, 0x18, 0x31, 0x23,
    0x25, 0x1d, 0x28, 0x3a, 0x33, 0x3d, 0x3c, 0x37, 0x4e, 0x39, 0x33, 0x48, 0x38, 0x5c, 0x40, 0x40,
    0x44, 0x57, 0x45, 0x37, 0x38, 0x50, 0x6d, 0x51, 0x57, 0x5f, 0x62, 0x67, 0x68, 0x67, 0x3e, 0x4d,
    0x71, 0x79, 0x70, 0x64, 0x78, 0x5c, 0x65, 0x67, 0x63, 0xff, 0xdb, 0x00, 0x43, 0x01, 0x11, 0x12,
    0x12, 0x18, 0x15, 0x18, 0x2f, 0x1a, 0x1a, 0x2f, 0x63, 0x42, 0x38, 0x42, 0x63, 0x63, 0x63, 0x63,
    0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63,
    0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x17, 0x17, 0x17, 0x17, 0x17, 0x17,
    0x17, 0x17, 0x17, 0x17, 0x17, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63,
    0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0xff, 0xc2, 0x00, 0x11, 0x08, 0x00, 0x05,
    0x00, 0x07, 0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01, 0xff, 0xc4, 0x00, 0x15,
    0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x01, 0xff, 0xc4, 0x00, 0x15, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xda, 0x00, 0x0c, 0x03, 0x01,
    0x00, 0x02, 0x10, 0x03, 0x10, 0x00, 0x00, 0x01, 0xa2, 0x3f, 0xff, 0xc4, 0x00, 0x16, 0x10, 0x01,
    0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
    0x00, 0x02, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x05, 0x02, 0x20, 0xcd, 0xff, 0xc4,
    0x00, 0x18, 0x11, 0x00, 0x02, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x03, 0x02, 0x12, 0x31, 0xff, 0xda, 0x00, 0x08, 0x01, 0x03, 0x01, 0x01,
    0x3f, 0x01, 0x4b, 0x25, 0x4d, 0x3f, 0xff, 0xc4, 0x00, 0x15, 0x11, 0x01, 0x01, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0xff, 0xda, 0x00,
    0x08, 0x01, 0x02, 0x01, 0x01, 0x3f, 0x01, 0x1b, 0xff, 0xc4, 0x00, 0x14, 0x10, 0x01, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xda,
    0x00, 0x08, 0x01, 0x01, 0x00, 0x06, 0x3f, 0x02, 0x7f, 0xff, 0xc4, 0x00, 0x15, 0x10, 0x01, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11,
    0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x3f, 0x21, 0x85, 0xff, 0xda, 0x00, 0x0c, 0x03,
    0x01, 0x00, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10, 0x03, 0xff, 0xc4, 0x00, 0x15, 0x11, 0x01,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x11, 0xff, 0xda, 0x00, 0x08, 0x01, 0x03, 0x01, 0x01, 0x3f, 0x10, 0x84, 0x7f, 0xff, 0xc4, 0x00,
    0x17, 0x11, 0x00, 0x03, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x01, 0x11, 0x31, 0xff, 0xda, 0x00, 0x08, 0x01, 0x02, 0x01, 0x01, 0x3f, 0x10,
    0x74, 0xd3, 0xff, 0xc4, 0x00, 0x18, 0x10, 0x00, 0x02, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11, 0x21, 0x41, 0x51, 0xff, 0xda, 0x00, 0x08,
    0x01, 0x01, 0x00, 0x01, 0x3f, 0x10, 0x49, 0x15, 0x87, 0xff, 0xd9,
];

#[test]
fn a_jpeg_with_stray_bytes_between_segments_is_read_as_libjpeg_reads_it() {
    let limits = ImageLimits::DEFAULT;
    assert_eq!(
        declared_pixels(JPEG_WITH_STRAY_BYTES, &limits).unwrap(),
        7 * 5
    );
    for convention in [Convention::Processor, Convention::Pipeline] {
        let img = decode(
            JPEG_WITH_STRAY_BYTES,
            &limits,
            convention,
            Transparency::Composite,
        )
        .unwrap();
        assert_eq!(img.dimensions(), (7, 5));
    }
}

/// Found by `fuzz/` (target `decode`): a 7×5 progressive JPEG whose APP0 segment gives a length of
/// 1, which libjpeg reads as an empty segment, reading on. The header walk stopped there and
/// refused it ("no frame header"), and would have missed the scans behind it.
#[rustfmt::skip]
const JPEG_WITH_A_SEGMENT_LENGTH_OF_ONE: &[u8] = &[
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x01, 0x2b, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00,
    0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x10, 0x0b, 0x0c, 0x0e, 0x0c,
    0x0a, 0x10, 0x0e, 0x0d, 0x0e, 0x12, 0x11, 0x10, 0x13, 0x18, 0x28, 0x1a, 0x18, 0x16, 0x16, 0x18,
    0x31, 0x23, 0x25, 0x1d, 0x28, 0x3a, 0x33, 0x3d, 0x3c, 0x39, 0x33, 0x38, 0x37, 0x40, 0x48, 0x5c,
    0x4e, 0x40, 0x44, 0x57, 0x45, 0x37, 0x38, 0x50, 0x6d, 0x51, 0x57, 0x5f, 0x62, 0x67, 0x68, 0x67,
    0x3e, 0x4d, 0x71, 0x79, 0x70, 0x64, 0x78, 0x5c, 0x65, 0x67, 0x63, 0xff, 0xdb, 0x00, 0x43, 0x01,
    0x11, 0x12, 0x12, 0x18, 0x15, 0x18, 0x2f, 0x1a, 0x1a, 0x2f, 0x63, 0x42, 0x38, 0x42, 0x63, 0x63,
    0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63,
    0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63,
    0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63, 0x63,
    0xff, 0xc2, 0x00, 0x11, 0x08, 0x00, 0x05, 0x00, 0x07, 0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01,
    0x03, 0x11, 0x01, 0x27, 0xce, 0x76, 0xed, 0x6d, 0x3d, 0xbc, 0xec, 0xd3, 0xef, 0xfa, 0xff, 0x00,
    0x59, 0x88, 0xc5, 0x79, 0xac, 0xf9, 0x0f, 0xd1, 0xc5, 0x29, 0x25, 0x33, 0x3c, 0xe1, 0x46, 0x69,
    0xc2, 0xd4, 0xe6, 0x5d, 0xd2, 0x9a, 0x8d, 0xed, 0xba, 0x5f, 0x27, 0xce, 0x76, 0xed, 0x6d, 0x3d,
    0xbc, 0xec, 0xd3, 0xef, 0xfa, 0xff, 0x00, 0x45, 0x58, 0x3f, 0xff, 0xc4, 0x00, 0x16, 0x10, 0x01,
    0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
    0xe2, 0x00, 0x02, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x05, 0x00, 0x00, 0x00, 0x10,
    0x03, 0xff, 0xc4, 0x00, 0x15, 0x11, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11, 0xff, 0xda, 0x00, 0x08, 0x01, 0x03, 0x01, 0x01,
    0x3f, 0x10, 0x84, 0x7f, 0xff, 0xc4, 0x00, 0x17, 0x11, 0x00, 0x03, 0x01, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x11, 0x31, 0xff, 0xda, 0x00,
    0x08, 0x01, 0x02, 0x01, 0x01, 0x3f, 0x10, 0x74, 0xd3, 0xff, 0xc4, 0x00, 0x18, 0x10, 0x00, 0x02,
    0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11,
    0x21, 0x41, 0x51, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x3f, 0x10, 0x49, 0x15, 0x87,
    0xff, 0xd9,
];

#[test]
fn a_jpeg_with_a_segment_length_of_one_is_read_as_libjpeg_reads_it() {
    let limits = ImageLimits::DEFAULT;
    assert_eq!(
        declared_pixels(JPEG_WITH_A_SEGMENT_LENGTH_OF_ONE, &limits).unwrap(),
        7 * 5
    );
    let img = decode(
        JPEG_WITH_A_SEGMENT_LENGTH_OF_ONE,
        &limits,
        Convention::Pipeline,
        Transparency::Composite,
    )
    .unwrap();
    assert_eq!(img.dimensions(), (7, 5));
}

#[test]
fn the_torchvision_backend_rescales_and_normalises_in_one_step() {
    // Every 8-bit level, at the model's size (not resized).
    let img = RgbImage::from_fn(16, 16, |x, y| {
        let v = (y * 16 + x) as u8;
        image::Rgb([v, 255 - v, v])
    });
    let torchvision = preprocess(
        &img,
        &Preprocess {
            processor: ImageProcessor::Torchvision,
            ..Preprocess::siglip(16)
        },
    )
    .values;
    // transformers fuses 1/255 into mean and std: 0.5 · 255 = 127.5 for both, in f32.
    for (i, &v) in img.as_raw().iter().step_by(3).enumerate() {
        assert_eq!(torchvision[i], (f32::from(v) - 127.5) / 127.5, "level {v}");
    }
    // The PIL backend rounds the rescaled value to f32 first: the last bit differs for some.
    let pil = preprocess(&img, &Preprocess::siglip(16)).values;
    let differ = pil.iter().zip(&torchvision).filter(|(a, b)| a != b).count();
    assert!(
        differ > 0
            && pil
                .iter()
                .zip(&torchvision)
                .all(|(a, b)| (a - b).abs() < 1e-6)
    );
}
