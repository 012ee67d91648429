//! Hostile inputs and clients, built here so that the soak (and tests) need no files: each is
//! something a cheap client can send, that the server must refuse or end with a known status.

use std::time::Duration;

use image::ImageEncoder;

use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tonic::{transport::Channel, Code, Status};

use crate::grpc::pb::{self, siglip_client::SiglipClient};

/// How the server ends a call that waits too long for a message (`--first-message-timeout-seconds`,
/// `--idle-timeout-seconds`): DEADLINE_EXCEEDED, the code of a call whose time ran out.
pub const IDLE_CODES: &[Code] = &[Code::DeadlineExceeded];

/// A grayscale progressive JPEG of `width`×`height` whose data is one DC scan and then `ac_scans`
/// scans of coefficients 1..63 made only of end-of-band runs: a few dozen bytes a scan, yet
/// libjpeg visits every block in each (a 0.5 MB, 4000×4000 file holds ~14,000). Every
/// AC scan after the first repeats the band, which libjpeg only warns about.
pub fn progressive_jpeg_of_empty_scans(width: u16, height: u16, ac_scans: usize) -> Vec<u8> {
    let blocks = usize::from(width.div_ceil(8)) * usize::from(height.div_ceil(8));
    let mut out = vec![0xFF, 0xD8];
    // Quantisation table 0: all ones.
    let mut dqt = vec![0x00];
    dqt.extend([1u8; 64]);
    segment(&mut out, 0xDB, &dqt);
    let [h1, h0] = height.to_be_bytes();
    let [w1, w0] = width.to_be_bytes();
    segment(&mut out, 0xC2, &[8, h1, h0, w1, w0, 1, 1, 0x11, 0]);
    // One code each, "0": DC category 0 (no change), AC EOB14 (a run of 2^14 + 14 bits blocks).
    let mut one_code = |class_and_id: u8, symbol: u8| {
        let mut dht = vec![class_and_id, 1];
        dht.extend([0u8; 15]);
        dht.push(symbol);
        segment(&mut out, 0xC4, &dht);
    };
    one_code(0x00, 0x00);
    one_code(0x10, 0xE0);

    segment(&mut out, 0xDA, &[1, 1, 0x00, 0, 0, 0]);
    let mut bits = Bits::default();
    for _ in 0..blocks {
        bits.put(0, 1);
    }
    bits.flush_into(&mut out);

    // Longest run: EOB14 with all 14 extra bits set, 32767 blocks.
    let runs = blocks.div_ceil(32767);
    for _ in 0..ac_scans {
        segment(&mut out, 0xDA, &[1, 1, 0x00, 1, 63, 0]);
        let mut bits = Bits::default();
        for _ in 0..runs {
            bits.put(0, 1);
            bits.put(0x3FFF, 14);
        }
        bits.flush_into(&mut out);
    }
    out.extend([0xFF, 0xD9]);
    out
}

fn segment(out: &mut Vec<u8>, marker: u8, body: &[u8]) {
    out.extend([0xFF, marker]);
    out.extend((body.len() as u16 + 2).to_be_bytes());
    out.extend(body);
}

/// Entropy-coded bits, most significant first, with 0xFF stuffed and the last byte padded
/// with ones.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    acc: u32,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u32, count: u32) {
        for i in (0..count).rev() {
            self.acc = (self.acc << 1) | ((value >> i) & 1);
            self.n += 1;
            if self.n == 8 {
                self.push_byte();
            }
        }
    }

    fn push_byte(&mut self) {
        let byte = self.acc as u8;
        self.bytes.push(byte);
        if byte == 0xFF {
            self.bytes.push(0x00);
        }
        self.acc = 0;
        self.n = 0;
    }

    fn flush_into(mut self, out: &mut Vec<u8>) {
        if self.n > 0 {
            let pad = 8 - self.n;
            self.acc = (self.acc << pad) | ((1 << pad) - 1);
            self.push_byte();
        }
        out.extend(self.bytes);
    }
}

/// The attack as it was measured: 4000 × 4000 and 14 000 scans (about 0.5 MB).
pub fn scan_bomb() -> Vec<u8> {
    progressive_jpeg_of_empty_scans(4000, 4000, 14_000)
}

/// The body of a PNG `iCCP` chunk whose profile inflates to `profile_len` zero bytes (64 MiB in
/// about 420 KB).
pub fn icc_profile_bomb(profile_len: usize) -> Vec<u8> {
    let mut body = b"bomb\0\0".to_vec();
    body.extend(zlib_of_zeros(profile_len));
    body
}

/// A 1 × 1 PNG carrying a 64 MiB ICC profile: decoded at a bounded cost, not refused (the PNG
/// decoder inflates metadata only up to `--max-image-bytes` and drops a profile past it).
pub fn metadata_bomb() -> Vec<u8> {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&[128], 1, 1, image::ExtendedColorType::L8)
        .expect("encoding to memory");
    png_with_chunk(&png, b"iCCP", &icc_profile_bomb(64 << 20))
}

/// `png` with a chunk inserted right after IHDR.
pub fn png_with_chunk(png: &[u8], kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut chunk = (body.len() as u32).to_be_bytes().to_vec();
    chunk.extend(kind);
    chunk.extend(body);
    let crc = crc32(&chunk[4..]);
    chunk.extend(crc.to_be_bytes());
    let mut out = png.to_vec();
    out.splice(33..33, chunk);
    out
}

/// PNG's CRC-32, bit by bit: chunks here are built once.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A zlib stream that inflates to `len` zero bytes: one literal, then copies of 258 bytes at
/// distance 1 (13 bits each, fixed Huffman codes).
fn zlib_of_zeros(len: usize) -> Vec<u8> {
    const LITERAL_ZERO: (u32, u32) = (0x30, 8);
    let mut bits = DeflateBits::default();
    bits.value(0b011, 3); // the final block, fixed Huffman codes
    bits.code(LITERAL_ZERO.0, LITERAL_ZERO.1);
    let mut done = 1;
    while len - done >= 258 {
        bits.code(0b1100_0101, 8); // length 258
        bits.code(0, 5); // distance 1
        done += 258;
    }
    for _ in done..len {
        bits.code(LITERAL_ZERO.0, LITERAL_ZERO.1);
    }
    bits.code(0, 7); // end of block
    let mut out = vec![0x78, 0x01];
    out.extend(bits.finish());
    let adler = (((len % 65521) as u32) << 16) | 1;
    out.extend(adler.to_be_bytes());
    out
}

/// Deflate's bit order: values least significant bit first, Huffman codes most significant
/// bit first.
#[derive(Default)]
struct DeflateBits {
    out: Vec<u8>,
    acc: u8,
    n: u32,
}

impl DeflateBits {
    fn bit(&mut self, bit: u32) {
        self.acc |= (bit as u8) << self.n;
        self.n += 1;
        if self.n == 8 {
            self.out.push(self.acc);
            (self.acc, self.n) = (0, 0);
        }
    }

    fn value(&mut self, value: u32, bits: u32) {
        (0..bits).for_each(|i| self.bit((value >> i) & 1));
    }

    fn code(&mut self, code: u32, bits: u32) {
        (0..bits).rev().for_each(|i| self.bit((code >> i) & 1));
    }

    fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            self.out.push(self.acc);
        }
        self.out
    }
}

/// Classify with `image` as the encoded image and one label.
pub async fn classify_bytes(
    client: &mut SiglipClient<Channel>,
    image: Vec<u8>,
) -> Result<(), Status> {
    client
        .classify(pb::ClassifyRequest {
            model: String::new(),
            image: Some(pb::Image {
                source: Some(pb::image::Source::Encoded(image)),
            }),
            texts: vec!["a photo".into()],
            options: None,
        })
        .await
        .map(drop)
}

/// `ClassifyRequest` as bytes, so that a label can be something a `String` cannot hold.
#[derive(Clone, PartialEq, prost::Message)]
struct RawClassify {
    #[prost(bytes = "vec", repeated, tag = "2")]
    texts: Vec<Vec<u8>>,
}

/// Classify whose label is not UTF-8: the message itself cannot be decoded.
pub async fn not_utf8_label(channel: Channel) -> Result<(), Status> {
    // The generated client only encodes a `ClassifyRequest`, whose labels are `String`s: call
    // through tonic's generic client with the raw message instead.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("connection: {e}")))?;
    let codec = tonic_prost::ProstCodec::<RawClassify, pb::ClassifyResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/siglip.v1.Siglip/Classify");
    let request = RawClassify {
        texts: vec![b"a photo of a \xff\xfe".to_vec()],
    };
    grpc.unary(tonic::Request::new(request), path, codec)
        .await
        .map(drop)
}

/// Opens a Stream and sends nothing; returns how the server ended it.
pub async fn silent_stream(client: &mut SiglipClient<Channel>) -> Result<(), Status> {
    let (_keep_open, rx) = mpsc::channel::<pb::StreamRequest>(1);
    let mut responses = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(response) = responses.next().await {
        response?;
    }
    Ok(())
}

/// Sends a configuration and frames and never reads a result; gives up after `HOLD`.
pub async fn deaf_stream(client: &mut SiglipClient<Channel>, image: Vec<u8>) -> Result<(), Status> {
    const HOLD: Duration = Duration::from_secs(30);
    let (tx, rx) = mpsc::channel::<pb::StreamRequest>(1);
    let call = client.stream(ReceiverStream::new(rx));
    let send = async {
        let config = pb::StreamRequest {
            msg: Some(pb::stream_request::Msg::Config(pb::StreamConfig {
                model: String::new(),
                texts: vec!["a photo".into()],
                options: None,
                mode: pb::DeliveryMode::EveryFrame as i32,
                ..Default::default()
            })),
        };
        if tx.send(config).await.is_err() {
            return;
        }
        for id in 0.. {
            let frame = pb::StreamRequest {
                msg: Some(pb::stream_request::Msg::Frame(pb::Frame {
                    frame_id: id,
                    image: Some(pb::Image {
                        source: Some(pb::image::Source::Encoded(image.clone())),
                    }),
                    ..pb::Frame::default()
                })),
            };
            if tx.send(frame).await.is_err() {
                return;
            }
        }
    };
    // The response stream is held and never polled.
    let _ = tokio::time::timeout(HOLD, async {
        let (held, ()) = tokio::join!(call, send);
        let _unread = held;
        std::future::pending::<()>().await
    })
    .await;
    Ok(())
}

/// An Upload that declares `bytes`, sends all but one and stalls; returns how the server ended
/// it.
pub async fn stalled_upload(client: &mut SiglipClient<Channel>) -> Result<(), Status> {
    const BYTES: usize = 8 << 20;
    let (tx, rx) = mpsc::channel::<pb::UploadRequest>(4);
    let sender = tokio::spawn(async move {
        let header = pb::UploadRequest {
            msg: Some(pb::upload_request::Msg::Header(pb::UploadHeader {
                model: String::new(),
                texts: vec!["a photo".into()],
                options: None,
                total_bytes: BYTES as u64,
            })),
        };
        if tx.send(header).await.is_err() {
            return;
        }
        let chunk = vec![0u8; 1 << 20];
        let mut sent = 0;
        while sent < BYTES - 1 {
            let n = chunk.len().min(BYTES - 1 - sent);
            let message = pb::UploadRequest {
                msg: Some(pb::upload_request::Msg::Chunk(chunk[..n].to_vec())),
            };
            if tx.send(message).await.is_err() {
                return;
            }
            sent += n;
        }
        // Stall: keep the request stream open until the server gives up.
        tx.closed().await;
    });
    let result = client.upload(ReceiverStream::new(rx)).await.map(drop);
    sender.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::image::{decode, Convention, ImageLimits, Transparency};

    /// The bombs are valid images: the server must refuse them for what they cost, not because
    /// they are corrupt.
    #[test]
    fn the_scan_bomb_is_a_valid_gray_jpeg() {
        let jpeg = progressive_jpeg_of_empty_scans(100, 100, 5);
        let img = decode(
            &jpeg,
            &ImageLimits::DEFAULT,
            Convention::Processor,
            Transparency::Composite,
        )
        .expect("decodes");
        assert_eq!(img.dimensions(), (100, 100));
        assert!(
            img.pixels().all(|p| p.0 == [128; 3]),
            "every DC is 0: mid-gray"
        );
    }

    #[test]
    fn the_metadata_bomb_is_small_and_decodes() {
        let png = metadata_bomb();
        assert!(png.len() < 600_000, "{} bytes", png.len());
        let img = decode(
            &png,
            &ImageLimits::DEFAULT,
            Convention::Processor,
            Transparency::Composite,
        )
        .expect("decodes");
        assert_eq!(img.as_raw(), &[128; 3]);
    }
}
