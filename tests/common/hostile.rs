//! Hostile images, built by the tests themselves.

/// A grayscale progressive JPEG of `width`×`height` whose data is one DC scan and then `ac_scans`
/// scans of coefficients 1..63 made only of end-of-band runs: a few dozen bytes a scan, yet
/// libjpeg visits every block in each (the 0.5 MB, 4000×4000 file has ~14,000). Every
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
