//! Lookups in a Darts-clone double-array trie, the format of sentencepiece's precompiled
//! charsmap (`third_party/darts_clone/darts.h`).
//!
//! `spm_precompiled` (what `tokenizers` uses) reads the same format but returns only the values
//! of matching keys, not their lengths, and sentencepiece needs the longest match; the lookup
//! is twenty lines, so it lives here.

/// A double array: 32-bit units, read-only.
pub struct DoubleArray {
    units: Vec<u32>,
}

impl DoubleArray {
    /// From the little-endian bytes of the array (a trailing partial unit is ignored).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let units = bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Self { units }
    }

    /// `commonPrefixSearch`: `(length, value)` of every key that prefixes `key`, shortest
    /// first. A malformed array ends the search instead of reading out of bounds.
    pub fn common_prefixes<'a>(&'a self, key: &'a [u8]) -> impl Iterator<Item = (usize, u32)> + 'a {
        let mut id = self.units.first().map(|&u| offset(u));
        key.iter()
            .enumerate()
            .map_while(move |(i, &b)| {
                let at = id? ^ u32::from(b);
                let unit = *self.units.get(at as usize)?;
                if label(unit) != u32::from(b) {
                    id = None;
                    return None;
                }
                let next = at ^ offset(unit);
                id = Some(next);
                let value = if has_leaf(unit) {
                    self.units.get(next as usize).map(|&u| (i + 1, value(u)))
                } else {
                    None
                };
                Some(value)
            })
            .flatten()
    }
}

fn has_leaf(unit: u32) -> bool {
    (unit >> 8) & 1 == 1
}

fn value(unit: u32) -> u32 {
    unit & ((1 << 31) - 1)
}

fn label(unit: u32) -> u32 {
    unit & ((1 << 31) | 0xff)
}

fn offset(unit: u32) -> u32 {
    (unit >> 10) << ((unit & (1 << 9)) >> 6)
}
