//! Text → input ids, with the checkpoint's own `tokenizer.json` (written by the export tool to
//! reproduce transformers' slow tokenizer).
//!
//! SigLIP was trained on text padded to a fixed 64 tokens and pools the last position, so every
//! text is padded to `max_length` with the pad id and truncated to it with the EOS kept, and no
//! attention mask is used: padding to the longest text in a batch wrecks zero-shot accuracy.

use std::path::Path;

use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::manifest::TextSpec;
use crate::error::{Error, Result};

/// The ids of one text, exactly `max_length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds {
    pub ids: Vec<i64>,
    /// The text had more tokens than fit and was cut (EOS kept at the end).
    pub truncated: bool,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    max_length: usize,
}

impl TextTokenizer {
    pub fn load(path: &Path, spec: &TextSpec) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path)
            .map_err(|e| Error::Model(format!("cannot load tokenizer {}: {e}", path.display())))?;
        // Enforce the manifest's length and pad id whatever the file says, so a hand-edited
        // tokenizer.json cannot silently switch to padding-to-longest. The side stays the
        // file's (Gemma-tokenised checkpoints may pad on the left).
        let pad_token = inner.id_to_token(spec.pad_id).ok_or_else(|| {
            Error::Model(format!("pad id {} is not in the vocabulary", spec.pad_id))
        })?;
        let direction = inner
            .get_padding()
            .map_or(PaddingDirection::Right, |p| p.direction);
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(spec.max_length),
            direction,
            pad_id: spec.pad_id,
            pad_token,
            ..Default::default()
        }));
        inner
            .with_truncation(Some(TruncationParams {
                max_length: spec.max_length,
                ..Default::default()
            }))
            .map_err(|e| Error::Model(format!("tokenizer truncation: {e}")))?;
        Ok(Self {
            inner,
            max_length: spec.max_length,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Tokenises a batch of texts. An empty text is valid (it becomes just EOS and padding).
    pub fn encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<TokenIds>> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| Error::InvalidArgument(format!("cannot tokenise text: {e}")))?;
        encodings
            .into_iter()
            .map(|enc| {
                let ids: Vec<i64> = enc.get_ids().iter().map(|&id| i64::from(id)).collect();
                if ids.len() != self.max_length {
                    return Err(Error::Model(format!(
                        "tokenizer produced {} ids instead of {}",
                        ids.len(),
                        self.max_length
                    )));
                }
                Ok(TokenIds {
                    ids,
                    truncated: !enc.get_overflowing().is_empty(),
                })
            })
            .collect()
    }
}
