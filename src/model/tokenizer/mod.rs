//! Text → input ids, exactly as the checkpoint's transformers tokenizer gives them.
//!
//! Two kinds of checkpoint, one pipeline (`tokenizers`' `TokenizerImpl`):
//! - SigLIP 2 and other Gemma-tokenised checkpoints ship a `tokenizer.json`, which the export
//!   tool copies; `tokenizers` runs it as transformers does.
//! - SigLIP v1 ships only `spiece.model`, tokenised in transformers by the slow
//!   `SiglipTokenizer` (Python around libsentencepiece). No `tokenizer.json` reproduces it, so
//!   [`siglip`] ports it to Rust and runs as the pipeline's model.
//!
//! SigLIP was trained on text padded to a fixed 64 tokens and pools the last position, so every
//! text is padded to `max_length` with the pad id and truncated to it with the EOS kept, and no
//! attention mask is used: padding to the longest text in a batch wrecks zero-shot accuracy.

mod darts;
mod python_str;
mod sentencepiece;
mod siglip;

use std::path::Path;

use serde::Deserialize;

use tokenizers::{
    processors::template::TemplateProcessing, DecoderWrapper, Model, ModelWrapper,
    NormalizerWrapper, PaddingDirection, PaddingParams, PaddingStrategy, PostProcessorWrapper,
    PreTokenizerWrapper, Tokenizer, TokenizerImpl, TruncationParams,
};

use super::manifest::{Files, TextSpec};
use crate::error::{Error, Result};
use siglip::SlowSiglip;

/// The manifest's `text.tokenizer` for SigLIP v1 checkpoints.
const SIGLIP_SENTENCEPIECE: &str = "siglip-sentencepiece";

/// The ids of one text, exactly `max_length` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIds {
    pub ids: Vec<i64>,
    /// The text had more tokens than fit and was cut (EOS kept at the end).
    pub truncated: bool,
}

type Pipeline<M> =
    TokenizerImpl<M, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

enum Inner {
    /// A checkpoint's own `tokenizer.json`.
    Json(Box<Tokenizer>),
    /// SigLIP v1's slow tokenizer, ported.
    Siglip(Box<Pipeline<SlowSiglip>>),
}

pub struct TextTokenizer {
    inner: Inner,
    max_length: usize,
}

impl TextTokenizer {
    /// Loads the tokenizer files the manifest names from the model directory `dir`.
    pub fn load(dir: &Path, files: &Files, spec: &TextSpec) -> Result<Self> {
        let path = dir.join(&files.tokenizer);
        let inner = if spec.tokenizer == SIGLIP_SENTENCEPIECE {
            let spec_file = files.slow_tokenizer.as_ref().ok_or_else(|| {
                Error::Model(format!(
                    "the manifest names no slow_tokenizer file, which {SIGLIP_SENTENCEPIECE} needs: re-export the model"
                ))
            })?;
            let spec_path = dir.join(spec_file);
            let bytes = std::fs::read(&path)
                .map_err(|e| Error::Model(format!("cannot read {}: {e}", path.display())))?;
            let raw = std::fs::read_to_string(&spec_path)
                .map_err(|e| Error::Model(format!("cannot read {}: {e}", spec_path.display())))?;
            let slow_spec = serde_json::from_str(&raw)
                .map_err(|e| Error::Model(format!("{}: {e}", spec_path.display())))?;
            let model = SlowSiglip::new(&bytes, slow_spec)
                .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
            tracing::info!(
                "tokenizer: transformers' slow SiglipTokenizer, with the string rules of {}",
                model.python()
            );
            let mut pipeline = Pipeline::new(model);
            let eos = pipeline
                .get_model()
                .id_to_token(spec.eos_id)
                .ok_or_else(|| {
                    Error::Model(format!("eos id {} is not in the vocabulary", spec.eos_id))
                })?;
            // transformers appends EOS unless the ids already end with it; with the pad id
            // equal to EOS (as SigLIP has it) padding makes the two the same.
            if spec.pad_id != spec.eos_id {
                return Err(Error::Model(format!(
                    "pad id {} differs from eos id {}: {SIGLIP_SENTENCEPIECE} checkpoints pad with EOS",
                    spec.pad_id, spec.eos_id
                )));
            }
            let template = TemplateProcessing::builder()
                .try_single(format!("$A {eos}"))
                .and_then(|b| {
                    b.special_tokens(vec![(eos, spec.eos_id)])
                        .build()
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| Error::Model(format!("tokenizer template: {e}")))?;
            pipeline.with_post_processor(Some(PostProcessorWrapper::Template(template)));
            Inner::Siglip(Box::new(pipeline))
        } else {
            let tokenizer = Tokenizer::from_file(&path).map_err(|e| {
                Error::Model(format!("cannot load tokenizer {}: {e}", path.display()))
            })?;
            Inner::Json(Box::new(tokenizer))
        };
        let mut tokenizer = Self {
            inner,
            max_length: spec.max_length,
        };
        match &mut tokenizer.inner {
            Inner::Json(t) => fix_length::<ModelWrapper>(t, spec)?,
            Inner::Siglip(t) => fix_length(t, spec)?,
        }
        tokenizer.check(&dir.join(&files.tokenizer_check))?;
        Ok(tokenizer)
    }

    /// Re-tokenises the export's sample texts and fails unless every id equals transformers'.
    /// A model directory whose tokenizer files were edited, or a port that drifted from the
    /// reference, never serves.
    fn check(&self, path: &Path) -> Result<()> {
        #[derive(Deserialize)]
        struct Check {
            texts: Vec<String>,
            input_ids: Vec<Vec<i64>>,
        }
        let raw = std::fs::read_to_string(path)
            .map_err(|e| Error::Model(format!("cannot read {}: {e}", path.display())))?;
        let check: Check = serde_json::from_str(&raw)
            .map_err(|e| Error::Model(format!("{}: {e}", path.display())))?;
        let ours = self.encode(&check.texts)?;
        let bad: Vec<&String> = check
            .texts
            .iter()
            .zip(&ours)
            .zip(&check.input_ids)
            .filter(|((_, got), want)| got.ids != **want)
            .map(|((text, _), _)| text)
            .collect();
        if !bad.is_empty() || check.texts.len() != check.input_ids.len() {
            return Err(Error::Model(format!(
                "{}: the tokenizer differs from transformers on {} of {} sample texts (first: {:?}); \
                 re-export the model with this version's export tool",
                path.display(),
                bad.len(),
                check.texts.len(),
                bad.first()
            )));
        }
        Ok(())
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Tokenises a batch of texts. An empty text is valid (it becomes just EOS and padding).
    pub fn encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<TokenIds>> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = match &self.inner {
            Inner::Json(t) => t.encode_batch(inputs, true),
            Inner::Siglip(t) => t.encode_batch(inputs, true),
        }
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

/// Enforces the manifest's length and pad id whatever the tokenizer file says, so a hand-edited
/// tokenizer.json cannot silently switch to padding-to-longest. The side stays the file's
/// (Gemma-tokenised checkpoints may pad on the left).
fn fix_length<M: Model>(tokenizer: &mut Pipeline<M>, spec: &TextSpec) -> Result<()> {
    let pad_token = tokenizer
        .get_model()
        .id_to_token(spec.pad_id)
        .ok_or_else(|| Error::Model(format!("pad id {} is not in the vocabulary", spec.pad_id)))?;
    let direction = tokenizer
        .get_padding()
        .map_or(PaddingDirection::Right, |p| p.direction);
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(spec.max_length),
        direction,
        pad_id: spec.pad_id,
        pad_token,
        ..Default::default()
    }));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: spec.max_length,
            ..Default::default()
        }))
        .map_err(|e| Error::Model(format!("tokenizer truncation: {e}")))?;
    Ok(())
}
