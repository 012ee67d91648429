//! transformers' slow `SiglipTokenizer` (5.x) ported to Rust: what `tokenize()` and
//! `convert_tokens_to_ids()` do before the ids are truncated, closed with EOS and padded.
//!
//! The Python, in order (`tokenization_siglip.py`, `tokenization_python.py`):
//! 1. `"▁" + text.replace("▁", " ")`;
//! 2. split on the added tokens (`Trie.split`), strip the neighbours of tokens whose flags say
//!    so, keep added and special tokens whole;
//! 3. every other chunk: lower-case, delete ASCII punctuation, collapse whitespace, strip
//!    (`canonicalize_text`), then `sp.encode("<unk>" + chunk)` without the pieces of `"<unk>"`
//!    itself (a trick to keep sentencepiece from adding its own "▁");
//! 4. drop a leading lone "▁" before a special token;
//! 5. ids: added tokens by their id, every other piece by sentencepiece's `piece_to_id`.
//!
//! It runs as the `Model` of a `tokenizers` pipeline with no normaliser and no pre-tokeniser:
//! step 2 happens before any normalisation and decides how each chunk is normalised (only the
//! first gets the "▁"), which the framework's added-token stage cannot express. The pipeline
//! then adds EOS, truncates and pads as for every other checkpoint.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::{AddedToken, Model, Token, Trainer};

use super::python_str::{PythonStr, Tables};
use super::sentencepiece::SentencePiece;

const SPIECE_UNDERLINE: char = '\u{2581}';
/// Python's `string.punctuation`.
const ASCII_PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
/// The `slow_tokenizer.json` layout this port reads.
const SPEC_VERSION: u32 = 1;

/// `slow_tokenizer.json`, written by `python/siglip_export/slow_tokenizer.py`.
#[derive(Debug, Deserialize)]
pub struct Spec {
    version: u32,
    do_lower_case: bool,
    unk_token: String,
    split_special_tokens: bool,
    added_tokens: Vec<AddedTokenSpec>,
    /// What the text is split on (`tokens_trie`).
    split_on: Vec<String>,
    all_special_tokens: Vec<String>,
    python_str: Tables,
}

#[derive(Debug, Deserialize)]
struct AddedTokenSpec {
    id: u32,
    content: String,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

/// The slow SigLIP tokenizer: text in, ids out (before EOS, truncation and padding).
pub struct SlowSiglip {
    sp: SentencePiece,
    py: PythonStr,
    do_lower_case: bool,
    unk_token: String,
    /// `len(sp.encode(unk_token))`: the pieces dropped from every chunk (step 3).
    unk_token_length: usize,
    split_special_tokens: bool,
    split_on: AddedTrie,
    added: HashMap<String, AddedTokenSpec>,
    all_special: HashSet<String>,
}

impl SlowSiglip {
    /// From the bytes of `spiece.model` and the parsed `slow_tokenizer.json`.
    pub fn new(spiece: &[u8], spec: Spec) -> Result<Self, String> {
        if spec.version != SPEC_VERSION {
            return Err(format!(
                "slow_tokenizer.json version {} is not {SPEC_VERSION}: re-export the model",
                spec.version
            ));
        }
        let sp = SentencePiece::from_bytes(spiece)?;
        let unk_token_length = sp.encode(&spec.unk_token).len();
        Ok(Self {
            py: PythonStr::new(spec.python_str)?,
            do_lower_case: spec.do_lower_case,
            unk_token_length,
            unk_token: spec.unk_token,
            split_special_tokens: spec.split_special_tokens,
            split_on: AddedTrie::new(&spec.split_on),
            added: spec
                .added_tokens
                .into_iter()
                .map(|t| (t.content.clone(), t))
                .collect(),
            all_special: spec.all_special_tokens.into_iter().collect(),
            sp,
        })
    }

    /// Whose `str` rules the port follows ("Python 3.11.7, Unicode 14.0.0").
    pub fn python(&self) -> &str {
        self.py.origin()
    }

    /// `SiglipTokenizer.tokenize(text)`.
    pub fn tokenize(&self, text: &str) -> Vec<String> {
        let text = format!("{SPIECE_UNDERLINE}{}", text.replace(SPIECE_UNDERLINE, " "));
        let mut tokens = if self.split_special_tokens {
            self.tokenize_chunk(&text)
        } else {
            self.tokenize_split(&text)
        };
        if tokens.len() > 1
            && tokens[0] == SPIECE_UNDERLINE.to_string()
            && self.all_special.contains(&tokens[1])
        {
            tokens.remove(0);
        }
        tokens
    }

    /// `PreTrainedTokenizer.tokenize` after `prepare_for_tokenization`: split on the added
    /// tokens, apply their strip flags, tokenise the rest chunk by chunk.
    fn tokenize_split(&self, text: &str) -> Vec<String> {
        let mut chunks = self.split_on.split(text);
        for i in 0..chunks.len() {
            let Some(flags) = self.added.get(&chunks[i]) else {
                continue;
            };
            let token = chunks[i].clone();
            let has_left = i > 0 && !chunks[i - 1].is_empty();
            let has_right = i + 1 < chunks.len() && !chunks[i + 1].is_empty();
            // `single_word` looks at the neighbours as they were before the strips below.
            let left_ends_in_space = has_left && chunks[i - 1].ends_with(' ');
            let right_starts_with_space = has_right && chunks[i + 1].starts_with(' ');
            if flags.rstrip && has_right {
                chunks[i + 1] = self.py.lstrip(&chunks[i + 1]).to_owned();
            }
            if flags.lstrip && has_left {
                chunks[i - 1] = self.py.rstrip(&chunks[i - 1]).to_owned();
            }
            if flags.single_word {
                if has_left && !left_ends_in_space {
                    chunks[i - 1].push_str(&token);
                    chunks[i].clear();
                } else if has_right && !right_starts_with_space {
                    chunks[i + 1].insert_str(0, &token);
                    chunks[i].clear();
                }
            }
        }
        let mut out = Vec::new();
        for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
            if self.added.contains_key(&chunk) || self.all_special.contains(&chunk) {
                out.push(chunk);
            } else {
                out.extend(self.tokenize_chunk(&chunk));
            }
        }
        out
    }

    /// `SiglipTokenizer._tokenize(chunk)`.
    fn tokenize_chunk(&self, chunk: &str) -> Vec<String> {
        let text = self.canonicalize(chunk);
        let mut pieces = self.sp.encode(&format!("{}{text}", self.unk_token));
        if pieces.len() >= self.unk_token_length {
            pieces.drain(..self.unk_token_length);
        }
        pieces
    }

    /// `SiglipTokenizer.canonicalize_text(text, keep_punctuation_exact_string=None)`.
    fn canonicalize(&self, text: &str) -> String {
        let lowered;
        let text = if self.do_lower_case {
            lowered = self.py.lower(text);
            &lowered
        } else {
            text
        };
        let text: String = text
            .chars()
            .filter(|&c| !ASCII_PUNCTUATION.contains(c))
            .collect();
        self.py
            .strip(&self.py.collapse_whitespace(&text))
            .to_owned()
    }

    /// `_convert_token_to_id_with_added_voc`.
    pub fn token_id(&self, token: &str) -> u32 {
        match self.added.get(token) {
            Some(t) => t.id,
            None => self.sp.piece_to_id(token),
        }
    }
}

/// transformers' `Trie` of added tokens, with its `split` ported statement by statement
/// (`tokenization_python.py`), on characters as Python indexes them — including how
/// overlapping tokens resolve: the earliest start wins, then its longest match.
struct AddedTrie {
    /// `nodes[0]` is the root; each node maps a character to a child.
    nodes: Vec<HashMap<char, usize>>,
    /// Nodes where a token ends (Python's `""` key).
    terminal: Vec<bool>,
}

impl AddedTrie {
    fn new<'a>(tokens: impl IntoIterator<Item = &'a String>) -> Self {
        let mut trie = Self {
            nodes: vec![HashMap::new()],
            terminal: vec![false],
        };
        for token in tokens.into_iter().filter(|t| !t.is_empty()) {
            let mut node = 0;
            for c in token.chars() {
                node = match trie.nodes[node].get(&c) {
                    Some(&next) => next,
                    None => {
                        let next = trie.nodes.len();
                        trie.nodes.push(HashMap::new());
                        trie.terminal.push(false);
                        trie.nodes[node].insert(c, next);
                        next
                    }
                };
            }
            trie.terminal[node] = true;
        }
        trie
    }

    fn child(&self, node: usize, c: Option<char>) -> Option<usize> {
        c.and_then(|c| self.nodes[node].get(&c).copied())
    }

    fn split(&self, text: &str) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        if !chars.iter().any(|c| self.nodes[0].contains_key(c)) {
            return if text.is_empty() {
                vec![]
            } else {
                vec![text.to_owned()]
            };
        }
        // Python's OrderedDict of start -> trie pointer.
        let mut states: Vec<(usize, usize)> = Vec::new();
        let mut offsets = vec![0];
        let mut skip = 0;
        for (current, &current_char) in chars.iter().enumerate() {
            if skip > 0 && current < skip {
                continue;
            }
            let mut to_remove = Vec::new();
            let mut reset = false;
            for i in 0..states.len() {
                let (mut start, pointer) = states[i];
                if self.terminal[pointer] {
                    // The longest match among the states that started no later than this one;
                    // those before it have already consumed `current_char`.
                    let mut end = 0;
                    for &(lookstart, mut look) in &states {
                        if lookstart > start {
                            break;
                        }
                        let mut lookahead = if lookstart < start {
                            current + 1
                        } else {
                            current
                        };
                        end = lookahead;
                        if self.terminal[look] {
                            (start, end, skip) = (lookstart, lookahead, lookahead);
                        }
                        while let Some(next) = self.child(look, chars.get(lookahead).copied()) {
                            look = next;
                            lookahead += 1;
                            if self.terminal[look] {
                                (start, end, skip) = (lookstart, lookahead, lookahead);
                            }
                            if lookahead == chars.len() {
                                break;
                            }
                        }
                    }
                    offsets.push(start);
                    offsets.push(end);
                    reset = true;
                    break;
                } else if let Some(next) = self.child(pointer, Some(current_char)) {
                    states[i].1 = next;
                } else {
                    to_remove.push(start);
                }
            }
            if reset {
                states.clear();
            } else {
                states.retain(|(start, _)| !to_remove.contains(start));
            }
            if current >= skip {
                if let Some(next) = self.child(0, Some(current_char)) {
                    states.push((current, next));
                }
            }
        }
        if let Some(&(start, _)) = states.iter().find(|&&(_, p)| self.terminal[p]) {
            offsets.push(start);
            offsets.push(chars.len());
        }
        // `cut_text`
        offsets.push(chars.len());
        let mut out = Vec::new();
        let mut start = 0;
        for end in offsets {
            // Zero-width cuts (a match at 0, two matches in a row) and inverted ones (Python
            // logs those as a bug) are skipped.
            if start >= end {
                continue;
            }
            out.push(chars[start..end].iter().collect());
            start = end;
        }
        out
    }
}

/// As a `tokenizers` model: the whole text arrives as one sequence (no normaliser or
/// pre-tokeniser is configured), and every piece becomes a token.
impl Model for SlowSiglip {
    type Trainer = NotTrainable;

    fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
        let span = (0, sequence.len());
        Ok(SlowSiglip::tokenize(self, sequence)
            .into_iter()
            .map(|piece| Token::new(self.token_id(&piece), piece, span))
            .collect())
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        Some(self.token_id(token))
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.added
            .values()
            .find(|t| t.id == id)
            .map(|t| t.content.clone())
            .or_else(|| self.sp.id_to_piece(id).map(str::to_owned))
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        let mut vocab = self.sp.vocab();
        vocab.extend(self.added.values().map(|t| (t.content.clone(), t.id)));
        vocab
    }

    fn get_vocab_size(&self) -> usize {
        self.sp.vocab_size()
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err("the slow SigLIP tokenizer is read from spiece.model and slow_tokenizer.json; it is not saved".into())
    }

    fn get_trainer(&self) -> NotTrainable {
        NotTrainable
    }
}

/// The trainer `tokenizers::Model` requires; a checkpoint's vocabulary is never retrained here.
pub struct NotTrainable;

impl Trainer for NotTrainable {
    type Model = SlowSiglip;

    fn should_show_progress(&self) -> bool {
        false
    }

    fn train(&self, _model: &mut SlowSiglip) -> tokenizers::Result<Vec<AddedToken>> {
        Err("the slow SigLIP tokenizer cannot be trained".into())
    }

    fn feed<I, S, F>(&mut self, _iterator: I, _process: F) -> tokenizers::Result<()>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
        F: Fn(&str) -> tokenizers::Result<Vec<String>> + Sync,
    {
        Err("the slow SigLIP tokenizer cannot be trained".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(tokens: &[&str], text: &str) -> Vec<String> {
        let tokens: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        AddedTrie::new(&tokens).split(text)
    }

    /// The examples of `Trie.split`'s docstring, and the overlaps its lookahead resolves.
    #[test]
    fn trie_split_follows_transformers() {
        assert_eq!(
            split(&[], "[CLS] This is a extra_id_100"),
            ["[CLS] This is a extra_id_100"]
        );
        assert_eq!(
            split(
                &["[CLS]", "extra_id_1", "extra_id_100"],
                "[CLS] This is a extra_id_100"
            ),
            ["[CLS]", " This is a ", "extra_id_100"]
        );
        assert_eq!(split(&["A", "BC"], "ABC"), ["A", "BC"]);
        assert_eq!(split(&["ABC", "B"], "ABD"), ["A", "B", "D"]);
        assert_eq!(split(&["AB", "B", "C"], "ABC"), ["AB", "C"]);
        assert_eq!(split(&["</s>"], "</s></s>x"), ["</s>", "</s>", "x"]);
        assert_eq!(split(&["</s>"], ""), Vec::<String>::new());
    }
}
