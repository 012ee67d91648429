//! sentencepiece's text normaliser (`normalizer.cc`): the precompiled charsmap, user-defined
//! symbols, and the whitespace rules, byte for byte.

use super::super::darts::DoubleArray;
use super::trie::PieceTrie;
use super::{one_char_len, SPACE_SYMBOL};

/// sentencepiece's `Normalizer` (`normalizer.cc`).
pub(super) struct Normalizer {
    pub(super) charsmap: Option<CharsMap>,
    /// User-defined symbols pass through unnormalised (`PrefixMatcher`).
    pub(super) user_defined: PrefixSet,
    pub(super) add_dummy_prefix: bool,
    pub(super) remove_extra_whitespaces: bool,
    pub(super) escape_whitespaces: bool,
    pub(super) treat_whitespace_as_suffix: bool,
}

impl Normalizer {
    pub(super) fn normalize(&self, mut input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() * 3);
        if input.is_empty() {
            return out;
        }
        if self.remove_extra_whitespaces {
            while !input.is_empty() {
                let (sp, consumed) = self.normalize_prefix(input);
                if sp != b" " {
                    break;
                }
                input = &input[consumed..];
            }
        }
        if input.is_empty() {
            return out;
        }
        let space: &[u8] = if self.escape_whitespaces {
            SPACE_SYMBOL.as_bytes()
        } else {
            b" "
        };
        if !self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        let mut is_prev_space = self.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut sp, consumed) = self.normalize_prefix(input);
            while is_prev_space && sp.first() == Some(&b' ') {
                sp = &sp[1..];
            }
            if !sp.is_empty() {
                for &b in sp {
                    if self.escape_whitespaces && b == b' ' {
                        out.extend_from_slice(space);
                    } else {
                        out.push(b);
                    }
                }
                is_prev_space = sp.ends_with(b" ");
            }
            input = &input[consumed..];
            if !self.remove_extra_whitespaces {
                is_prev_space = false;
            }
        }
        if self.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        if self.treat_whitespace_as_suffix && self.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        out
    }

    /// The normalised form of the longest rule matching the start of `input`, and how many bytes
    /// of it the rule consumes: a user-defined symbol as is, else the charsmap's longest match,
    /// else one character unchanged.
    fn normalize_prefix<'a>(&'a self, input: &'a [u8]) -> (&'a [u8], usize) {
        if let Some(len) = self.user_defined.longest_prefix(input) {
            return (&input[..len], len);
        }
        if let Some((len, replacement)) =
            self.charsmap.as_ref().and_then(|m| m.longest_match(input))
        {
            return (replacement, len);
        }
        let len = one_char_len(input[0]).min(input.len());
        (&input[..len], len)
    }
}

/// A precompiled charsmap: `<trie size: u32 LE><double-array trie><NUL-separated outputs>`.
pub(super) struct CharsMap {
    trie: DoubleArray,
    normalized: Vec<u8>,
}

impl CharsMap {
    pub(super) fn parse(blob: &[u8]) -> Result<Self, String> {
        let broken = || "the normalisation rule blob is broken".to_string();
        let size = blob.get(..4).ok_or_else(broken)?;
        let size = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
        let trie = blob.get(4..4 + size).ok_or_else(broken)?;
        Ok(Self {
            trie: DoubleArray::from_bytes(trie),
            normalized: blob[4 + size..].to_vec(),
        })
    }

    /// The longest key that prefixes `input`, with its replacement (up to the next NUL).
    fn longest_match(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        let (len, value) = self.trie.common_prefixes(input).last()?;
        // sentencepiece ignores a match whose output offset lies outside the blob.
        let rest = self
            .normalized
            .get(value as usize..)
            .filter(|r| !r.is_empty())?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Some((len, &rest[..end]))
    }
}

/// `PrefixMatcher` over the user-defined symbols: the longest one that prefixes the input.
pub(super) struct PrefixSet {
    symbols: PieceTrie,
}

impl PrefixSet {
    pub(super) fn new(symbols: Vec<String>) -> Self {
        let mut trie = PieceTrie::default();
        for (i, symbol) in (0u32..).zip(&symbols) {
            trie.insert(symbol.as_bytes(), i);
        }
        Self { symbols: trie }
    }

    fn longest_prefix(&self, input: &[u8]) -> Option<usize> {
        self.symbols.prefixes(input).last().map(|(len, _)| len)
    }
}
