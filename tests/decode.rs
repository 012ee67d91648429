//! Decoding's cost, measured: the time of hostile progressive JPEGs at the scan limit, and the
//! memory peak of decoding a large image of each accepted format.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use siglip_serve::model::image::{decode, Convention, ImageLimits, Transparency};
use siglip_serve::tools::attacks::progressive_jpeg_of_empty_scans;

fn limits_with_scans(max_jpeg_scans: usize) -> ImageLimits {
    ImageLimits {
        max_jpeg_scans,
        ..ImageLimits::DEFAULT
    }
}

fn time_decode(bytes: &[u8], limits: &ImageLimits) -> Duration {
    let started = Instant::now();
    let img = decode(
        bytes,
        limits,
        Convention::Processor,
        Transparency::Composite,
    )
    .expect("decodes");
    assert!(img.width() > 0);
    started.elapsed()
}

/// What one scan costs, and so what a file at the scan limit costs (the figures are printed:
/// `--nocapture`): a file at the default limit decodes, one scan more is refused before decoding.
#[test]
fn hostile_jpeg_decode_cost() {
    let max = ImageLimits::DEFAULT.max_jpeg_scans;
    let (w, h) = (4000u16, 4000u16);
    for ac_scans in [1, max - 1, 1000] {
        let bytes = progressive_jpeg_of_empty_scans(w, h, ac_scans);
        let t = time_decode(&bytes, &limits_with_scans(usize::MAX));
        println!(
            "{w}x{h} {:>5} scans, {:>7} bytes: {:>7.0} ms",
            ac_scans + 1,
            bytes.len(),
            t.as_secs_f64() * 1e3
        );
    }
    let at_limit = progressive_jpeg_of_empty_scans(w, h, max - 1);
    time_decode(&at_limit, &ImageLimits::DEFAULT);
    let over = progressive_jpeg_of_empty_scans(w, h, max);
    let err = decode(
        &over,
        &ImageLimits::DEFAULT,
        Convention::Processor,
        Transparency::Composite,
    )
    .unwrap_err();
    assert!(err.to_string().contains("--max-jpeg-scans"), "{err}");
}

/// The formats the server accepts, each as a test image of about `pixels` pixels.
const FORMATS: [&str; 9] = [
    "jpeg-baseline",
    "jpeg-progressive",
    "png-rgb8",
    "png-rgba16",
    "gif",
    "webp-lossless",
    "bmp",
    "tiff",
    "raw-rgba8",
];

/// Most resident memory one decode (and its resize to 384 px) may add, per pixel of the image.
/// The decoded RGB8 image is 3 bytes a pixel; decoders add their own buffers (a 16-bit RGBA PNG
/// is 8 bytes a pixel before conversion).
const PEAK_BYTES_PER_PIXEL: [(&str, f64); 9] = [
    ("jpeg-baseline", 4.0),
    ("jpeg-progressive", 7.0),
    ("png-rgb8", 4.0),
    ("png-rgba16", 12.0),
    ("gif", 8.0),
    ("webp-lossless", 8.0),
    ("bmp", 4.0),
    ("tiff", 7.0),
    ("raw-rgba8", 4.0),
];

/// Width and height of a test image of about `mpx` megapixels, 4:3.
fn size(mpx: f64) -> (u32, u32) {
    let height = (mpx * 1e6 / (4.0 / 3.0)).sqrt() as u32 & !7;
    (height / 3 * 4, height)
}

fn pattern(width: u32, height: u32) -> image::RgbImage {
    image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 + y) as u8,
            (x ^ y) as u8,
            (x.wrapping_mul(y) / 3) as u8,
        ])
    })
}

fn encode(format: &str, width: u32, height: u32) -> Vec<u8> {
    use image::{codecs, ExtendedColorType, ImageEncoder};
    let rgb = pattern(width, height);
    let write = |encoder: &dyn Fn(&mut Vec<u8>)| {
        let mut out = Vec::new();
        encoder(&mut out);
        out
    };
    match format {
        "jpeg-baseline" | "jpeg-progressive" => {
            let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
            c.set_size(width as usize, height as usize);
            if format == "jpeg-progressive" {
                c.set_progressive_mode();
            } else {
                c.set_fastest_defaults();
            }
            let mut c = c.start_compress(Vec::new()).unwrap();
            c.write_scanlines(rgb.as_raw()).unwrap();
            c.finish().unwrap()
        }
        "png-rgb8" => write(&|out| {
            codecs::png::PngEncoder::new(out)
                .write_image(&rgb, width, height, ExtendedColorType::Rgb8)
                .unwrap()
        }),
        "png-rgba16" => {
            let rgba16: Vec<u8> = rgb
                .pixels()
                .flat_map(|p| [p[0], p[0], p[1], p[1], p[2], p[2], 200, 0])
                .collect();
            write(&|out| {
                codecs::png::PngEncoder::new(out)
                    .write_image(&rgba16, width, height, ExtendedColorType::Rgba16)
                    .unwrap()
            })
        }
        "gif" => uncompressed_gif(width, height),
        "webp-lossless" => write(&|out| {
            codecs::webp::WebPEncoder::new_lossless(out)
                .write_image(&rgb, width, height, ExtendedColorType::Rgb8)
                .unwrap()
        }),
        "bmp" => write(&|out| {
            codecs::bmp::BmpEncoder::new(out)
                .write_image(&rgb, width, height, ExtendedColorType::Rgb8)
                .unwrap()
        }),
        "tiff" => {
            let mut cursor = std::io::Cursor::new(Vec::new());
            codecs::tiff::TiffEncoder::new(&mut cursor)
                .write_image(&rgb, width, height, ExtendedColorType::Rgb8)
                .unwrap();
            cursor.into_inner()
        }
        "raw-rgba8" => rgb.pixels().flat_map(|p| [p[0], p[1], p[2], 128]).collect(),
        other => panic!("unknown format {other}"),
    }
}

/// A GIF with a 256-grey palette whose LZW data never grows past 9-bit codes (a clear code
/// every 254 pixels): encoding a large GIF through a quantiser would take minutes.
fn uncompressed_gif(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend((width as u16).to_le_bytes());
    out.extend((height as u16).to_le_bytes());
    out.extend([0xF7, 0, 0]);
    out.extend((0..=255u8).flat_map(|v| [v, v, v]));
    out.push(0x2C);
    out.extend([0, 0, 0, 0]);
    out.extend((width as u16).to_le_bytes());
    out.extend((height as u16).to_le_bytes());
    out.extend([0, 8]);
    let (clear, end) = (256u32, 257u32);
    let mut data = Vec::new();
    let (mut acc, mut n) = (0u64, 0u32);
    let mut put = |code: u32, data: &mut Vec<u8>| {
        acc |= u64::from(code) << n;
        n += 9;
        while n >= 8 {
            data.push(acc as u8);
            acc >>= 8;
            n -= 8;
        }
    };
    let pixels = width as usize * height as usize;
    for i in 0..pixels {
        if i % 254 == 0 {
            put(clear, &mut data);
        }
        put((i % 251) as u32, &mut data);
    }
    put(end, &mut data);
    if n > 0 {
        data.push(acc as u8);
    }
    for block in data.chunks(255) {
        out.push(block.len() as u8);
        out.extend(block);
    }
    out.extend([0, 0x3B]);
    out
}

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} not in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The measured side of [`decode_memory_peak`], in a process of its own: decodes (and
/// resizes) the image at `path`, after resetting the peak, and prints the memory the decode
/// added at its peak.
fn measure_one_decode(path: &str) {
    let (format, width, height) = {
        let spec = std::env::var("SIGLIP_DECODE_MEMORY_SPEC").unwrap();
        let mut parts = spec.split(' ');
        let format = parts.next().unwrap().to_owned();
        let w: u32 = parts.next().unwrap().parse().unwrap();
        let h: u32 = parts.next().unwrap().parse().unwrap();
        (format, w, h)
    };
    let bytes = std::fs::read(path).unwrap();
    let limits = ImageLimits {
        max_bytes: usize::MAX,
        ..ImageLimits::DEFAULT
    };
    let prep = siglip_serve::model::image::Preprocess::siglip(384);
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak (clear_refs)");
    let before = status_kb("VmRSS:");
    let rgb = if format == "raw-rgba8" {
        siglip_serve::model::image::from_raw(
            width,
            height,
            siglip_serve::model::image::RawFormat::Rgba8,
            &bytes,
            &limits,
            Convention::Processor,
            &prep,
        )
    } else {
        decode(
            &bytes,
            &limits,
            Convention::Processor,
            Transparency::Composite,
        )
    }
    .expect("decodes");
    let pixels = siglip_serve::model::image::preprocess(&rgb, &prep);
    assert_eq!(rgb.dimensions(), (width, height));
    assert_eq!(pixels.values.len(), 3 * 384 * 384);
    drop((rgb, pixels));
    let peak = status_kb("VmHWM:");
    println!("decode-peak-kb={}", peak.saturating_sub(before));
}

/// The memory peak of decoding each accepted format, each in a process of its own: prints a
/// table and holds each to its bound per pixel. `SIGLIP_DECODE_MEMORY_MPX` sets the image size
/// (default 8 megapixels, for CI; docs/flags.md, `--max-decoding-pixels`, has the figures at 50).
#[test]
fn decode_memory_peak() {
    // The same test, started by itself below with one image to measure.
    if let Ok(path) = std::env::var("SIGLIP_DECODE_MEMORY_INPUT") {
        return measure_one_decode(&path);
    }
    let mpx: f64 = std::env::var("SIGLIP_DECODE_MEMORY_MPX")
        .map_or(8.0, |v| v.parse().expect("SIGLIP_DECODE_MEMORY_MPX"));
    let (width, height) = size(mpx);
    let pixels = f64::from(width) * f64::from(height);
    let dir = std::env::temp_dir().join(format!("siglip-decode-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "decode peak above the encoded input, {width}x{height} ({:.1} Mpx):",
        pixels / 1e6
    );
    let mut over = Vec::new();
    for format in FORMATS {
        let bytes = encode(format, width, height);
        let path = dir.join(format);
        std::fs::write(&path, &bytes).unwrap();
        let started = Instant::now();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "decode_memory_peak", "--nocapture"])
            .env("SIGLIP_DECODE_MEMORY_INPUT", &path)
            .env(
                "SIGLIP_DECODE_MEMORY_SPEC",
                format!("{format} {width} {height}"),
            )
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(child.status.success(), "{format}: {stdout}");
        let kb: f64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("decode-peak-kb="))
            .unwrap_or_else(|| panic!("{format}: no figure in {stdout}"))
            .parse()
            .unwrap();
        let per_pixel = kb * 1024.0 / pixels;
        let bound = PEAK_BYTES_PER_PIXEL
            .iter()
            .find(|(f, _)| *f == format)
            .unwrap()
            .1;
        println!(
            "  {format:<17} {:>9.1} MB encoded  {:>8.1} MB peak  {per_pixel:>5.2} B/pixel (bound {bound})  {:>6.2} s",
            bytes.len() as f64 / 1e6,
            kb * 1024.0 / 1e6,
            started.elapsed().as_secs_f64()
        );
        if per_pixel > bound {
            over.push(format!("{format}: {per_pixel:.2} B/pixel > {bound}"));
        }
        std::fs::remove_file(&path).unwrap();
    }
    std::fs::remove_dir(&dir).unwrap();
    assert!(over.is_empty(), "over the bound: {over:?}");
}
