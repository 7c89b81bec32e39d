//! Pile-format JSONL corpora: `{"text": ..., "meta": {"pile_set_name": ...}}`, one document a
//! line, read as a stream; every error names the file and the line.
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The Pile's sets: lm-eval task suffix, `meta.pile_set_name`, and the effective-size weight (%)
/// the original uses for `pile_all` (docs/spec.md §3.2, `code/utils.py`).
pub const PILE_SETS: &[(&str, &str, f64)] = &[
    ("arxiv", "ArXiv", 8.96),
    ("bookcorpus2", "BookCorpus2", 0.75),
    ("books3", "Books3", 12.07),
    ("dm-mathematics", "DM Mathematics", 1.24),
    ("enron", "Enron Emails", 0.14),
    ("europarl", "EuroParl", 0.73),
    ("freelaw", "FreeLaw", 6.12),
    ("github", "Github", 7.59),
    ("gutenberg", "Gutenberg (PG-19)", 2.17),
    ("hackernews", "HackerNews", 0.62),
    ("nih-exporter", "NIH ExPorter", 0.30),
    ("opensubtitles", "OpenSubtitles", 1.55),
    ("openwebtext2", "OpenWebText2", 10.01),
    ("philpapers", "PhilPapers", 0.38),
    ("pile-cc", "Pile-CC", 18.11),
    ("pubmed-abstracts", "PubMed Abstracts", 3.07),
    ("pubmed-central", "PubMed Central", 14.40),
    ("stackexchange", "StackExchange", 5.13),
    ("ubuntu-irc", "Ubuntu IRC", 0.88),
    ("uspto", "USPTO Backgrounds", 3.65),
    ("wikipedia", "Wikipedia (en)", 1.53),
    ("youtubesubtitles", "YoutubeSubtitles", 0.60),
];

/// The `meta.pile_set_name` a user means by `name`: a task suffix (`github`, `pile_github`) or a
/// set name in any case; names outside the Pile are kept as given (custom corpora).
pub fn set_name(name: &str) -> String {
    let n = name.trim();
    let short = n.strip_prefix("pile_").unwrap_or(n).to_lowercase();
    PILE_SETS
        .iter()
        .find(|(task, set, _)| *task == short || set.to_lowercase() == n.to_lowercase())
        .map(|(_, set, _)| set.to_string())
        .unwrap_or_else(|| n.to_string())
}

/// One record of a Pile JSONL file.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// File it came from.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: u64,
    /// Document text.
    pub text: String,
    /// `meta.pile_set_name`, if present.
    pub set_name: Option<String>,
}

#[derive(Deserialize)]
struct Line {
    text: Option<String>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    pile_set_name: Option<String>,
}

/// Streams the records of a JSONL file.
pub struct Reader {
    path: PathBuf,
    lines: Box<dyn BufRead + Send>,
    line: u64,
    consumed: Arc<AtomicU64>,
    /// The stream failed (a truncated or corrupt `.zst`): nothing more can be read.
    failed: bool,
}

/// Counts the bytes read from the file (compressed bytes for `.zst`), for progress and ETA.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Reader {
    /// Opens a JSONL file, or a zstd-compressed one (`.zst`) as the Pile ships them.
    pub fn open(path: &Path) -> Result<Self> {
        let consumed = Arc::new(AtomicU64::new(0));
        let f = Counting {
            inner: std::fs::File::open(path).map_err(|e| Error::io(path, e))?,
            count: consumed.clone(),
        };
        let lines: Box<dyn BufRead + Send> = if path.extension().is_some_and(|e| e == "zst") {
            let dec = zstd::Decoder::new(f).map_err(|e| Error::io(path, e))?;
            Box::new(BufReader::with_capacity(1 << 20, dec))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, f))
        };
        Ok(Self {
            path: path.to_path_buf(),
            lines,
            line: 0,
            consumed,
            failed: false,
        })
    }

    /// Bytes of the file read so far.
    pub fn position(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    /// Whether `path` names a JSONL file (`.jsonl`, `.jsonl.zst`).
    pub fn is_jsonl(path: &Path) -> bool {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        name.ends_with(".jsonl") || name.ends_with(".jsonl.zst") || name.ends_with(".json.zst")
    }

    fn parse(&self, bytes: &[u8]) -> Result<Record> {
        let s = std::str::from_utf8(bytes).map_err(|e| {
            Error::bad_line(
                &self.path,
                self.line,
                format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            )
        })?;
        // serde reads a struct from a JSON array too, which would report an array of objects as
        // "invalid type: map, expected a string": say what the line is instead.
        let kind = match s.trim_start().as_bytes().first() {
            Some(b'{') => None,
            Some(b'[') => Some("a JSON array"),
            Some(b'"') => Some("a JSON string"),
            Some(b'-' | b'0'..=b'9') => Some("a JSON number"),
            Some(b't' | b'f' | b'n') => Some("a JSON literal"),
            _ => Some("not JSON"),
        };
        if let Some(kind) = kind {
            return Err(Error::bad_line(
                &self.path,
                self.line,
                format!("the line is {kind}; JSONL input is one JSON object per line, e.g. {{\"text\": \"...\"}}"),
            ));
        }
        let l: Line = serde_json::from_str(s)
            .map_err(|e| Error::bad_line(&self.path, self.line, format!("malformed JSON: {e}")))?;
        let text = l
            .text
            .ok_or_else(|| Error::bad_line(&self.path, self.line, "missing field `text`"))?;
        Ok(Record {
            path: self.path.clone(),
            line: self.line,
            text,
            set_name: l.meta.and_then(|m| m.pile_set_name),
        })
    }
}

impl Iterator for Reader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let mut buf = Vec::new();
        loop {
            buf.clear();
            self.line += 1;
            match self.lines.read_until(b'\n', &mut buf) {
                Ok(0) => return None,
                Ok(_) => {
                    if buf.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    return Some(self.parse(&buf));
                }
                Err(e) => {
                    self.failed = true;
                    let kept = self.line - 1;
                    let compressed = self.path.extension().is_some_and(|e| e == "zst");
                    return Some(Err(if compressed {
                        // zstd reports a cut-off download as an I/O error: it is a bad file.
                        Error::bad_file(
                            &self.path,
                            format!("truncated or corrupt zstd stream after line {kept} (the last complete line; lines up to it are read): {e}"),
                        )
                    } else {
                        Error::io(&self.path, e)
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, b"{\"text\": \"a\", \"meta\": {\"pile_set_name\": \"Github\"}}\n\n{\"meta\": {}}\n{bad\n\xff\n").unwrap();
        let r: Vec<_> = Reader::open(&p).unwrap().collect();
        assert_eq!(r[0].as_ref().unwrap().set_name.as_deref(), Some("Github"));
        assert_eq!(
            r[1].as_ref().unwrap_err().to_string(),
            format!("{}:3: missing field `text`", p.display())
        );
        assert!(r[2]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("x.jsonl:4: malformed JSON"));
        assert!(r[3]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("x.jsonl:5: invalid UTF-8"));
    }

    #[test]
    fn set_names_accept_task_and_pile_names() {
        assert_eq!(set_name("github"), "Github");
        assert_eq!(set_name("pile_wikipedia"), "Wikipedia (en)");
        assert_eq!(set_name("enron emails"), "Enron Emails");
        assert_eq!(set_name("Man pages"), "Man pages");
        let total: f64 = PILE_SETS.iter().map(|s| s.2).sum();
        assert!((total - 100.0).abs() < 0.02, "{total}");
    }

    #[test]
    fn reads_zstd_compressed_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl.zst");
        let data = b"{\"text\": \"a\"}\n{\"text\": \"b\"}\n";
        std::fs::write(&p, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        assert!(Reader::is_jsonl(&p));
        let texts: Vec<String> = Reader::open(&p).unwrap().map(|r| r.unwrap().text).collect();
        assert_eq!(texts, vec!["a", "b"]);
    }

    #[test]
    fn a_truncated_zstd_stream_is_a_bad_file_after_its_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl.zst");
        let data: String = (0..2000)
            .map(|i| format!("{{\"text\": \"document {i} {}\"}}\n", "x".repeat(i % 97)))
            .collect();
        let full = zstd::encode_all(data.as_bytes(), 3).unwrap();
        std::fs::write(&p, &full[..full.len() * 2 / 3]).unwrap();
        let records: Vec<_> = Reader::open(&p).unwrap().collect();
        let (last, rest) = records.split_last().unwrap();
        assert!(rest.iter().all(|r| r.is_ok()));
        let e = last.as_ref().unwrap_err();
        assert_eq!(e.exit_code(), 1);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("after line {}", rest.len())) && msg.contains("x.jsonl.zst"),
            "{msg}"
        );
    }

    #[test]
    fn a_json_array_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, "[{\"text\": \"a\"}]\n\"b\"\n").unwrap();
        let r: Vec<_> = Reader::open(&p).unwrap().collect();
        let msg = r[0].as_ref().unwrap_err().to_string();
        assert!(
            msg.contains(
                "x.jsonl:1: the line is a JSON array; JSONL input is one JSON object per line"
            ),
            "{msg}"
        );
        assert!(r[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains(":2: the line is a JSON string"));
    }
}
