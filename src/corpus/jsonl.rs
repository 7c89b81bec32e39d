//! JSONL corpora (`.jsonl`; `.jsonl.zst` as the Pile ships them, `.json.gz` as Dolma does): one
//! JSON object a line, read as a stream, the text and set name found by their field paths; every
//! error names file and line.
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;

use super::{FieldPath, Fields, Record};
use crate::error::{Error, Result};

/// Streams the records of a JSONL file.
pub struct JsonlReader {
    path: PathBuf,
    fields: Fields,
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

/// Whether `path` names a JSONL file (`.jsonl`, or `.jsonl`/`.json` compressed as `.zst`, `.gz`).
pub fn is_jsonl(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    name.ends_with(".jsonl")
        || [".jsonl.zst", ".json.zst", ".jsonl.gz", ".json.gz"]
            .iter()
            .any(|e| name.ends_with(e))
}

/// How the file is compressed, by its extension.
fn compression(path: &Path) -> Option<&'static str> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("zst") => Some("zstd"),
        Some("gz") => Some("gzip"),
        _ => None,
    }
}

impl JsonlReader {
    /// Opens a JSONL file, or a zstd- (`.zst`) or gzip-compressed (`.gz`) one.
    pub fn open(path: &Path, fields: &Fields) -> Result<Self> {
        let consumed = Arc::new(AtomicU64::new(0));
        let f = Counting {
            inner: std::fs::File::open(path).map_err(|e| Error::io(path, e))?,
            count: consumed.clone(),
        };
        let lines: Box<dyn BufRead + Send> = match compression(path) {
            Some("zstd") => {
                let dec = zstd::Decoder::new(f).map_err(|e| Error::io(path, e))?;
                Box::new(BufReader::with_capacity(1 << 20, dec))
            }
            // Multi-member: `cat a.gz b.gz` is one valid gzip file.
            Some(_) => Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::read::MultiGzDecoder::new(f),
            )),
            None => Box::new(BufReader::with_capacity(1 << 20, f)),
        };
        Ok(Self {
            path: path.to_path_buf(),
            fields: fields.clone(),
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

    fn parse(&self, bytes: &[u8]) -> Result<Record> {
        let bad = |m: String| Error::bad_line(&self.path, self.line, m);
        let s = std::str::from_utf8(bytes)
            .map_err(|e| bad(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
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
            return Err(bad(format!("the line is {kind}; JSONL input is one JSON object per line, e.g. {{\"text\": \"...\"}}")));
        }
        let v: Value = serde_json::from_str(s).map_err(|e| bad(format!("malformed JSON: {e}")))?;
        let text = string_at(&v, &self.fields.text)
            .map_err(bad)?
            .ok_or_else(|| bad(format!("missing field `{}`", self.fields.text)))?;
        let set_name = string_at(&v, &self.fields.set).map_err(bad)?;
        Ok(Record {
            path: self.path.clone(),
            line: self.line,
            text,
            set_name,
        })
    }
}

/// The string at `path` in `v`: `None` where the path ends early or at `null`; an error where it
/// reaches something other than a string. A string met on the way that holds a JSON object (as
/// some exports keep `meta`) is looked into.
pub(super) fn string_at(v: &Value, path: &FieldPath) -> Result<Option<String>, String> {
    string_below(v, path, 0)
}

pub(super) fn string_below(
    v: &Value,
    path: &FieldPath,
    depth: usize,
) -> Result<Option<String>, String> {
    let parts = path.parts();
    if depth == parts.len() {
        return match v {
            Value::String(s) => Ok(Some(s.clone())),
            Value::Null => Ok(None),
            other => Err(format!(
                "field `{path}` is {}, not a string",
                kind_of(other)
            )),
        };
    }
    match v {
        Value::Object(m) => match m.get(&parts[depth]) {
            Some(next) => string_below(next, path, depth + 1),
            None => Ok(None),
        },
        Value::String(s) if s.trim_start().starts_with('{') => match serde_json::from_str(s) {
            Ok(inner @ Value::Object(_)) => string_below(&inner, path, depth),
            _ => Err(not_an_object(path, depth, "a string")),
        },
        Value::Null => Ok(None),
        other => Err(not_an_object(path, depth, kind_of(other))),
    }
}

fn not_an_object(path: &FieldPath, depth: usize, kind: &str) -> String {
    format!(
        "field `{path}`: `{}` is {kind}, not an object",
        path.parts()[..depth].join(".")
    )
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Iterator for JsonlReader {
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
                    return Some(Err(if let Some(kind) = compression(&self.path) {
                        // zstd and gzip report a cut-off download as an I/O error: a bad file.
                        Error::bad_file(
                            &self.path,
                            format!("truncated or corrupt {kind} stream after line {kept} (the last complete line; lines up to it are read): {e}"),
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

    fn open(p: &Path) -> JsonlReader {
        JsonlReader::open(p, &Fields::default()).unwrap()
    }

    #[test]
    fn reads_records_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, b"{\"text\": \"a\", \"meta\": {\"pile_set_name\": \"Github\"}}\n\n{\"meta\": {}}\n{bad\n\xff\n").unwrap();
        let r: Vec<_> = open(&p).collect();
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
    fn fields_are_found_by_path_and_wrong_kinds_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        let lines = [
            r#"{"content": "a", "meta": {"redpajama_set_name": "RedPajamaGithub"}}"#,
            r#"{"content": "b", "meta": "{\"redpajama_set_name\": \"RedPajamaArXiv\"}"}"#,
            r#"{"content": "c"}"#,
            r#"{"content": "d", "meta": null}"#,
            r#"{"content": 7}"#,
            r#"{"content": "e", "meta": [1]}"#,
        ];
        std::fs::write(&p, lines.join("\n")).unwrap();
        let fields = Fields {
            text: "content".parse().unwrap(),
            set: "meta.redpajama_set_name".parse().unwrap(),
        };
        let r: Vec<_> = JsonlReader::open(&p, &fields).unwrap().collect();
        let sets: Vec<Option<String>> = r[..4]
            .iter()
            .map(|r| r.as_ref().unwrap().set_name.clone())
            .collect();
        assert_eq!(
            sets,
            [
                Some("RedPajamaGithub".into()),
                Some("RedPajamaArXiv".into()),
                None,
                None
            ]
        );
        let e4 = r[4].as_ref().unwrap_err().to_string();
        assert!(
            e4.ends_with("x.jsonl:5: field `content` is a number, not a string"),
            "{e4}"
        );
        let e5 = r[5].as_ref().unwrap_err().to_string();
        assert!(
            e5.ends_with(":6: field `meta.redpajama_set_name`: `meta` is an array, not an object"),
            "{e5}"
        );
    }

    #[test]
    fn reads_zstd_compressed_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl.zst");
        let data = b"{\"text\": \"a\"}\n{\"text\": \"b\"}\n";
        std::fs::write(&p, zstd::encode_all(&data[..], 3).unwrap()).unwrap();
        assert!(is_jsonl(&p));
        let texts: Vec<String> = open(&p).map(|r| r.unwrap().text).collect();
        assert_eq!(texts, vec!["a", "b"]);
    }

    #[test]
    fn reads_gzip_compressed_json_as_dolma_ships_it() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("books-0000.json.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"text\": \"a\", \"source\": \"books\"}\n")
            .unwrap();
        let mut bytes = gz.finish().unwrap();
        // A second gzip member, as `cat` of two files makes.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"{\"text\": \"b\", \"source\": \"books\"}\n")
            .unwrap();
        bytes.extend(gz.finish().unwrap());
        std::fs::write(&p, &bytes).unwrap();
        assert!(is_jsonl(&p));
        let fields = Fields {
            set: "source".parse().unwrap(),
            ..Fields::default()
        };
        let r: Vec<Record> = JsonlReader::open(&p, &fields)
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(
            r.iter()
                .map(|r| (r.text.as_str(), r.set_name.as_deref()))
                .collect::<Vec<_>>(),
            [("a", Some("books")), ("b", Some("books"))]
        );
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        let last = JsonlReader::open(&p, &fields).unwrap().last().unwrap();
        let msg = last.unwrap_err().to_string();
        assert!(
            msg.contains("truncated or corrupt gzip stream after line 1"),
            "{msg}"
        );
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
        let records: Vec<_> = open(&p).collect();
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
        let r: Vec<_> = open(&p).collect();
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
