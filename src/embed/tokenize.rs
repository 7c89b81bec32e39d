//! The encoder's tokenizer on its own: truncation to the encoder's max length with its special
//! tokens, and only a prefix of a long text tokenized. Shared (`Arc`) so that an ingest tokenizes
//! the next block of documents on the CPU's cores while the encoder embeds the current one.
use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// A `tokenizer.json` set up as the encoder reads text: truncated, special tokens added, no padding.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    max_length: usize,
    path: PathBuf,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`, truncating to `max_length` tokens including special tokens.
    pub fn load(dir: &Path, max_length: usize) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&path).map_err(|e| Error::tokenizer(path.clone(), e))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| Error::tokenizer(path.clone(), e))?;
        // No padding in the tokenizer: batches are padded after sorting by length (embed::batching).
        tokenizer.with_padding(None);
        Ok(Self {
            tokenizer,
            max_length,
            path,
        })
    }

    /// Longest output in tokens, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Token ids of `text` as the encoder sees them (truncated, with special tokens).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.token_ids_batch(&[text])?.remove(0))
    }

    /// Token ids of many texts, tokenized in parallel, `TOKENIZE_CHUNK` texts at a time.
    ///
    /// Only the first `max_length` tokens count, so a long text is tokenized from a prefix cut
    /// just before a whitespace character (pre-tokenizers split there, so the tokens before the cut
    /// are those of the full text). Prefixes grow from `PREFIX_WINDOWS`·`max_length` bytes until
    /// one fills `max_length`; failing that, the full text is used.
    pub fn token_ids_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(TOKENIZE_CHUNK) {
            out.extend(self.token_ids_chunk(chunk)?);
        }
        Ok(out)
    }

    fn token_ids_chunk(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let texts: Vec<&str> = texts
            .iter()
            .map(|t| if t.is_empty() { " " } else { t })
            .collect();
        let mut out: Vec<Option<Vec<u32>>> = vec![None; texts.len()];
        let mut todo: Vec<usize> = (0..texts.len()).collect();
        let windows = PREFIX_WINDOWS
            .iter()
            .map(|w| w * self.max_length)
            .chain([usize::MAX]);
        for window in windows {
            if todo.is_empty() {
                break;
            }
            let inputs: Vec<&str> = todo
                .iter()
                .map(|&i| prefix_at_whitespace(texts[i], window))
                .collect();
            let encs = self
                .tokenizer
                .encode_batch(inputs.clone(), true)
                .map_err(|e| self.tok_err(e))?;
            let mut short = Vec::new();
            for ((&i, enc), input) in todo.iter().zip(encs).zip(&inputs) {
                // A cut prefix stands for the whole text only when it overflows max_length.
                if input.len() < texts[i].len() && enc.get_overflowing().is_empty() {
                    short.push(i);
                } else {
                    out[i] = Some(enc.get_ids().to_vec());
                }
            }
            todo = short;
        }
        Ok(out
            .into_iter()
            .map(|ids| ids.expect("the last window is the whole text"))
            .collect())
    }

    fn tok_err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// Texts per tokenizer call: the tokenizer keeps offsets, token strings and overflow windows for
/// every token of its input, so one call over a whole commit of long documents could take gigabytes.
const TOKENIZE_CHUNK: usize = 256;

/// Prefix lengths tried, in bytes per token of `max_length`: 512 tokens of prose or code fit in
/// 4 KiB; only texts of very long tokens need the larger cut or the whole text.
const PREFIX_WINDOWS: [usize; 2] = [8, 64];

/// `text` cut before the last whitespace character at or before byte `max` (whole when shorter,
/// or when no whitespace precedes `max`).
fn prefix_at_whitespace(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text[..end].rfind(char::is_whitespace) {
        Some(i) if i > 0 => &text[..i],
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_before_whitespace() {
        assert_eq!(prefix_at_whitespace("short", 10), "short");
        assert_eq!(prefix_at_whitespace("alpha beta gamma", 12), "alpha beta");
        assert_eq!(
            prefix_at_whitespace("nowhitespaceatall", 5),
            "nowhitespaceatall"
        );
        assert_eq!(prefix_at_whitespace("é é é é", 4), "é");
    }
}
