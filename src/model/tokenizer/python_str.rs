//! The Python `str` methods the slow SigLIP tokenizer calls — `lower()`, `isspace()`,
//! `strip()`, `re.sub(r"\s+", " ", …)` — driven by tables the export tool read off the Python
//! that ran it (`slow_tokenizer.json`, see `python/siglip_export/slow_tokenizer.py`).
//!
//! Rust's own `to_lowercase` has the same Final_Sigma rule but its Unicode version is the
//! compiler's, not the reference Python's: a letter cased in one and not the other lowers
//! differently. The tables make the answer the reference's on every code point.

use std::collections::HashMap;

use serde::Deserialize;

const CAPITAL_SIGMA: char = '\u{3a3}';

/// The tables as `slow_tokenizer.json` stores them.
#[derive(Debug, Deserialize)]
pub struct Tables {
    /// Python version and Unicode version they came from, for error messages and logs.
    pub python: String,
    pub unicode: String,
    /// `[code point, chr(code point).lower()]` wherever the two differ.
    lower: Vec<(u32, String)>,
    /// Code points where `isspace()` is true.
    whitespace: Vec<u32>,
    /// Inclusive code point runs of Final_Sigma's case-ignorable characters.
    case_ignorable: Vec<(u32, u32)>,
    /// Inclusive runs of the cased characters that are not case-ignorable.
    cased: Vec<(u32, u32)>,
}

/// Python's `str` behaviour, as the reference Python has it.
pub struct PythonStr {
    /// "Python 3.11.7, Unicode 14.0.0": whose behaviour this is.
    origin: String,
    lower: HashMap<char, Box<str>>,
    whitespace: Vec<char>,
    case_ignorable: Vec<(u32, u32)>,
    cased: Vec<(u32, u32)>,
}

impl PythonStr {
    pub fn new(tables: Tables) -> Result<Self, String> {
        let char_of = |cp: u32| char::from_u32(cp).ok_or(format!("{cp:#x} is not a character"));
        let lower = tables
            .lower
            .into_iter()
            .map(|(cp, low)| Ok((char_of(cp)?, low.into_boxed_str())))
            .collect::<Result<_, String>>()?;
        let mut whitespace = tables
            .whitespace
            .into_iter()
            .map(char_of)
            .collect::<Result<Vec<_>, _>>()?;
        whitespace.sort_unstable();
        Ok(Self {
            origin: format!("Python {}, Unicode {}", tables.python, tables.unicode),
            lower,
            whitespace,
            case_ignorable: sorted(tables.case_ignorable),
            cased: sorted(tables.cased),
        })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `str.isspace()` of one character (also what `\s` matches in `re`).
    pub fn is_space(&self, c: char) -> bool {
        self.whitespace.binary_search(&c).is_ok()
    }

    /// `s.lower()`: each character's full mapping, except that a capital sigma becomes final
    /// when a cased character precedes it and none follows (case-ignorable ones skipped).
    pub fn lower(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for (i, c) in s.char_indices() {
            if c == CAPITAL_SIGMA {
                out.push(if self.final_sigma(s, i) { 'ς' } else { 'σ' });
            } else if let Some(low) = self.lower.get(&c) {
                out.push_str(low);
            } else {
                out.push(c);
            }
        }
        out
    }

    /// CPython's `handle_capital_sigma` for the sigma at byte `i` of `s`.
    fn final_sigma(&self, s: &str, i: usize) -> bool {
        let is_cased = |c: Option<char>| c.is_some_and(|c| in_runs(&self.cased, c));
        let mut before = s[..i]
            .chars()
            .rev()
            .skip_while(|&c| self.is_case_ignorable(c));
        if !is_cased(before.next()) {
            return false;
        }
        let mut after = s[i + CAPITAL_SIGMA.len_utf8()..]
            .chars()
            .skip_while(|&c| self.is_case_ignorable(c));
        !is_cased(after.next())
    }

    fn is_case_ignorable(&self, c: char) -> bool {
        in_runs(&self.case_ignorable, c)
    }

    /// `s.strip()`.
    pub fn strip<'a>(&self, s: &'a str) -> &'a str {
        self.lstrip(self.rstrip(s))
    }

    /// `s.lstrip()`.
    pub fn lstrip<'a>(&self, s: &'a str) -> &'a str {
        s.trim_start_matches(|c| self.is_space(c))
    }

    /// `s.rstrip()`.
    pub fn rstrip<'a>(&self, s: &'a str) -> &'a str {
        s.trim_end_matches(|c| self.is_space(c))
    }

    /// `re.sub(r"\s+", " ", s)`.
    pub fn collapse_whitespace(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut in_run = false;
        for c in s.chars() {
            if self.is_space(c) {
                if !in_run {
                    out.push(' ');
                }
                in_run = true;
            } else {
                out.push(c);
                in_run = false;
            }
        }
        out
    }
}

fn sorted(mut runs: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    runs.sort_unstable();
    runs
}

fn in_runs(runs: &[(u32, u32)], c: char) -> bool {
    let cp = u32::from(c);
    let i = runs.partition_point(|&(start, _)| start <= cp);
    i > 0 && runs[i - 1].1 >= cp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A few rows of Python 3.11's tables, enough for the rules below.
    fn python() -> PythonStr {
        PythonStr::new(Tables {
            python: "test".into(),
            unicode: "test".into(),
            lower: vec![
                (u32::from('A'), "a".into()),
                (0x3a3, "σ".into()),
                (0x391, "α".into()),
                (0x130, "i\u{307}".into()),
            ],
            whitespace: vec![0x20, 0x09, 0x1c, 0x3000],
            // U+0301 COMBINING ACUTE ACCENT, U+0027 APOSTROPHE
            case_ignorable: vec![(0x27, 0x27), (0x301, 0x301)],
            cased: vec![
                (u32::from('A'), u32::from('Z')),
                (0x391, 0x3a9),
                (0x3b1, 0x3c9),
            ],
        })
        .unwrap()
    }

    #[test]
    fn final_sigma_follows_cpython() {
        let py = python();
        assert_eq!(py.lower("ΑΣ"), "ας");
        assert_eq!(py.lower("Σ"), "σ");
        assert_eq!(py.lower("ΑΣΑ"), "ασα");
        // Case-ignorable characters are skipped on both sides.
        assert_eq!(py.lower("Α\u{301}Σ\u{301}"), "α\u{301}ς\u{301}");
        assert_eq!(py.lower("ΑΣ'Α"), "ασ'α");
        assert_eq!(py.lower("ΑΣ Α"), "ας α");
        assert_eq!(py.lower("İ"), "i\u{307}");
    }

    #[test]
    fn whitespace_is_pythons() {
        let py = python();
        assert_eq!(py.collapse_whitespace("a \t\x1c b\u{3000}"), "a b ");
        assert_eq!(py.strip("\x1c a \u{3000}"), "a");
        assert_eq!(py.lstrip(" a "), "a ");
        assert_eq!(py.rstrip(" a "), " a");
    }
}
