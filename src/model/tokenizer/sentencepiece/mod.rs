//! libsentencepiece's Unigram encoder (`SentencePieceProcessor::Encode`, sentencepiece 0.2.1),
//! ported line for line from `normalizer.cc`, `unigram_model.cc::EncodeOptimized` and
//! `sentencepiece_processor.cc::PopulateSentencePieceText`.
//!
//! Why a port and not `tokenizers`' `Precompiled` + `Unigram`: those differ from libsentencepiece
//! in ways that change ids. `Precompiled` takes the *shortest* charsmap match per grapheme where
//! sentencepiece takes the longest at every byte (decomposed accents with marks out of canonical
//! order come out differently); `Unigram` keeps path scores in `f64` where sentencepiece adds in
//! `f64` and stores `f32`, so equal-score segmentations break ties differently; and it neither
//! merges runs of unknown pieces nor gives user-defined pieces their bonus.

use std::collections::HashMap;

mod normalizer;
mod trie;

use normalizer::{CharsMap, Normalizer, PrefixSet};
use trie::PieceTrie;

/// The subset of `sentencepiece_model.proto` (proto2) the encoder reads. Absent fields take the
/// proto's declared defaults through the accessors below.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, repeated, tag = "1")]
        pub pieces: Vec<SentencePiece>,
        #[prost(message, optional, tag = "2")]
        pub trainer_spec: Option<TrainerSpec>,
        #[prost(message, optional, tag = "3")]
        pub normalizer_spec: Option<NormalizerSpec>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SentencePiece {
        #[prost(string, optional, tag = "1")]
        pub piece: Option<String>,
        #[prost(float, optional, tag = "2")]
        pub score: Option<f32>,
        /// NORMAL = 1 (the default), UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5,
        /// BYTE = 6.
        #[prost(int32, optional, tag = "3")]
        pub r#type: Option<i32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TrainerSpec {
        /// UNIGRAM = 1 (the default), BPE = 2, WORD = 3, CHAR = 4.
        #[prost(int32, optional, tag = "3")]
        pub model_type: Option<i32>,
        #[prost(bool, optional, tag = "24")]
        pub treat_whitespace_as_suffix: Option<bool>,
        #[prost(bool, optional, tag = "35")]
        pub byte_fallback: Option<bool>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NormalizerSpec {
        #[prost(bytes = "vec", optional, tag = "2")]
        pub precompiled_charsmap: Option<Vec<u8>>,
        #[prost(bool, optional, tag = "3")]
        pub add_dummy_prefix: Option<bool>,
        #[prost(bool, optional, tag = "4")]
        pub remove_extra_whitespaces: Option<bool>,
        #[prost(bool, optional, tag = "5")]
        pub escape_whitespaces: Option<bool>,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(value: Option<i32>) -> Result<Self, String> {
        Ok(match value.unwrap_or(1) {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            other => return Err(format!("unknown piece type {other}")),
        })
    }

    /// Pieces matched against text (`pieces_` in `model_interface.cc`); the others are only
    /// reachable by id or by exact name (`reserved_id_map_`).
    fn is_matched(self) -> bool {
        matches!(self, Self::Normal | Self::UserDefined | Self::Unused)
    }
}

pub(super) const SPACE_SYMBOL: &str = "\u{2581}";
/// `kUnkPenalty` in `unigram_model.cc`.
const UNK_PENALTY: f32 = 10.0;

/// A loaded `spiece.model`: `encode` gives the pieces `SentencePieceProcessor.encode(text,
/// out_type=str)` gives, and `piece_to_id` maps them as `PieceToId` does.
pub struct SentencePiece {
    names: Vec<String>,
    scores: Vec<f32>,
    types: Vec<PieceType>,
    /// NORMAL, USER_DEFINED and UNUSED pieces.
    matched: HashMap<String, u32>,
    /// CONTROL, UNKNOWN and BYTE pieces.
    reserved: HashMap<String, u32>,
    unk_id: u32,
    byte_fallback: bool,
    min_score: f32,
    max_score: f32,
    pieces: PieceTrie,
    normalizer: Normalizer,
}

impl SentencePiece {
    /// Parses a serialised `ModelProto` (the bytes of `spiece.model`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let model = <proto::ModelProto as prost::Message>::decode(bytes)
            .map_err(|e| format!("not a sentencepiece model: {e}"))?;
        let trainer = model.trainer_spec.unwrap_or_default();
        if trainer.model_type.unwrap_or(1) != 1 {
            return Err("only Unigram sentencepiece models are supported".into());
        }
        let byte_fallback = trainer.byte_fallback.unwrap_or(false);
        let mut names = Vec::with_capacity(model.pieces.len());
        let mut scores = Vec::with_capacity(model.pieces.len());
        let mut types = Vec::with_capacity(model.pieces.len());
        let (mut matched, mut reserved) = (HashMap::new(), HashMap::new());
        let mut unk_id = None;
        let mut user_defined = Vec::new();
        // FLT_MAX and FLT_MIN (the smallest positive float), as unigram_model.cc starts them.
        let (mut min_score, mut max_score) = (f32::MAX, f32::MIN_POSITIVE);
        let mut trie = PieceTrie::default();
        for (id, p) in model.pieces.iter().enumerate() {
            let id = u32::try_from(id).map_err(|_| "too many pieces")?;
            let piece = p.piece.clone().unwrap_or_default();
            if piece.is_empty() {
                return Err("piece must not be empty".into());
            }
            let kind = PieceType::from_proto(p.r#type)?;
            let score = p.score.unwrap_or(0.0);
            let table = if kind.is_matched() {
                trie.insert(piece.as_bytes(), id);
                &mut matched
            } else {
                &mut reserved
            };
            if table.insert(piece.clone(), id).is_some() {
                return Err(format!("{piece} is already defined"));
            }
            match kind {
                PieceType::Normal => {
                    min_score = min_score.min(score);
                    max_score = max_score.max(score);
                }
                PieceType::UserDefined => user_defined.push(piece.clone()),
                PieceType::Unknown if unk_id.is_some() => {
                    return Err("unk is already defined".into())
                }
                PieceType::Unknown => unk_id = Some(id),
                PieceType::Byte if !byte_fallback => {
                    return Err(format!(
                        "byte piece {piece} is found although `byte_fallback` is false"
                    ))
                }
                _ => {}
            }
            names.push(piece);
            scores.push(score);
            types.push(kind);
        }
        let unk_id = unk_id.ok_or("unk is not defined")?;
        if byte_fallback && (0..=255u8).any(|b| !reserved.contains_key(&byte_piece(b))) {
            return Err("there are not 256 byte pieces although `byte_fallback` is true".into());
        }
        let spec = model.normalizer_spec.unwrap_or_default();
        let normalizer = Normalizer {
            charsmap: match spec.precompiled_charsmap.as_deref() {
                Some(blob) if !blob.is_empty() => Some(CharsMap::parse(blob)?),
                _ => None,
            },
            user_defined: PrefixSet::new(user_defined),
            add_dummy_prefix: spec.add_dummy_prefix.unwrap_or(true),
            remove_extra_whitespaces: spec.remove_extra_whitespaces.unwrap_or(true),
            escape_whitespaces: spec.escape_whitespaces.unwrap_or(true),
            treat_whitespace_as_suffix: trainer.treat_whitespace_as_suffix.unwrap_or(false),
        };
        Ok(Self {
            names,
            scores,
            types,
            matched,
            reserved,
            unk_id,
            byte_fallback,
            min_score,
            max_score,
            pieces: trie,
            normalizer,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.names.len()
    }

    /// `PieceToId`: reserved pieces first, then matched ones, else the unknown id.
    pub fn piece_to_id(&self, piece: &str) -> u32 {
        self.reserved
            .get(piece)
            .or_else(|| self.matched.get(piece))
            .copied()
            .unwrap_or(self.unk_id)
    }

    /// The piece name of `id`, if there is one.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }

    pub fn vocab(&self) -> HashMap<String, u32> {
        (0u32..)
            .zip(&self.names)
            .map(|(i, p)| (p.clone(), i))
            .collect()
    }

    /// `Encode(text)` as piece strings: normalise, Viterbi, then unknown pieces split into byte
    /// pieces (byte fallback) or merged with the unknown pieces right before them.
    pub fn encode(&self, text: &str) -> Vec<String> {
        let normalized = self.normalizer.normalize(text.as_bytes());
        let mut out: Vec<String> = Vec::new();
        let mut prev_unk = false;
        for (piece, id) in self.viterbi(&normalized) {
            let unk = id == self.unk_id;
            if unk && self.byte_fallback {
                out.extend(piece.iter().map(|&b| byte_piece(b)));
            } else {
                let piece = String::from_utf8_lossy(piece);
                match out.last_mut() {
                    Some(last) if unk && prev_unk => last.push_str(&piece),
                    _ => out.push(piece.into_owned()),
                }
            }
            prev_unk = unk;
        }
        out
    }

    /// `EncodeOptimized`, with its arithmetic: a candidate path score is computed in `f64` (the
    /// piece score is promoted) and compared with, then stored as, an `f32`; the unknown
    /// piece's candidate is pure `f32`. Ties keep the first path found.
    fn viterbi<'a>(&self, normalized: &'a [u8]) -> Vec<(&'a [u8], u32)> {
        #[derive(Clone, Copy)]
        struct Best {
            id: u32,
            score: f32,
            starts_at: Option<usize>,
        }
        let size = normalized.len();
        if size == 0 {
            return Vec::new();
        }
        let unk_score = self.min_score - UNK_PENALTY;
        let mut best = vec![
            Best {
                id: 0,
                score: 0.0,
                starts_at: None
            };
            size + 1
        ];
        let mut starts_at = 0;
        while starts_at < size {
            let till_here = best[starts_at].score;
            let mblen = one_char_len(normalized[starts_at]).min(size - starts_at);
            let mut has_single_node = false;
            for (end, id) in self.pieces.prefixes(&normalized[starts_at..]) {
                let kind = self.types[id as usize];
                if kind == PieceType::Unused {
                    continue;
                }
                let length = end;
                let score: f64 = if kind == PieceType::UserDefined {
                    f64::from(length as f32 * self.max_score) - 0.1
                } else {
                    f64::from(self.scores[id as usize])
                };
                let candidate = score + f64::from(till_here);
                let target = &mut best[starts_at + end];
                if target.starts_at.is_none() || candidate > f64::from(target.score) {
                    *target = Best {
                        id,
                        score: candidate as f32,
                        starts_at: Some(starts_at),
                    };
                }
                has_single_node |= length == mblen;
            }
            if !has_single_node {
                let candidate = unk_score + till_here;
                let target = &mut best[starts_at + mblen];
                if target.starts_at.is_none() || candidate > target.score {
                    *target = Best {
                        id: self.unk_id,
                        score: candidate,
                        starts_at: Some(starts_at),
                    };
                }
            }
            starts_at += mblen;
        }
        let mut pieces = Vec::new();
        let mut end = size;
        while end > 0 {
            let node = best[end];
            // Every character boundary ends some path (an unknown piece at worst); only a
            // charsmap that emits broken UTF-8 could leave one unlinked.
            let start = node.starts_at.unwrap_or(0);
            pieces.push((&normalized[start..end], node.id));
            end = start;
        }
        pieces.reverse();
        pieces
    }
}

/// `ByteToPiece`: `<0x%02X>`.
fn byte_piece(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// `string_util::OneCharLen`: the length of a UTF-8 sequence from its first byte.
pub(super) fn one_char_len(first: u8) -> usize {
    const LEN: [u8; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4];
    usize::from(LEN[usize::from(first >> 4)])
}
