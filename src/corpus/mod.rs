//! Corpora as researchers have them, read as streams of documents: JSONL(.zst) (the Pile's
//! `{"text": ..., "meta": {"pile_set_name": ...}}`, Dolma's `source`, RedPajama's
//! `meta.redpajama_set_name`, ...) and Parquet (Hugging Face datasets' shards), the text and set
//! name found by field paths, set names mapped to task names. Every error names the file and the
//! line or row.
mod inputs;
mod jsonl;
mod parquet;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use inputs::{data_files, DataFiles};
pub use jsonl::{is_jsonl, JsonlReader};
pub use parquet::{is_parquet, ParquetReader};

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

/// One document of a corpus file.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// File it came from.
    pub path: PathBuf,
    /// 1-based line number (JSONL) or row number (Parquet).
    pub line: u64,
    /// Document text.
    pub text: String,
    /// The set name at the set field, if present.
    pub set_name: Option<String>,
}

/// A dotted path to a field: `text`, `meta.pile_set_name`, `meta.redpajama_set_name`. In Parquet
/// the parts name a column and its struct children (or a string column holding JSON objects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// The Pile's set field, `meta.pile_set_name`.
    pub fn default_set() -> Self {
        Self(vec!["meta".into(), "pile_set_name".into()])
    }

    /// The path's parts, outermost first.
    pub fn parts(&self) -> &[String] {
        &self.0
    }
}

impl std::str::FromStr for FieldPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<String> = s.split('.').map(str::to_string).collect();
        if parts.iter().any(|p| p.trim().is_empty()) {
            return Err(format!(
                "`{s}` is not a field path: names joined by dots, e.g. `meta.pile_set_name`"
            ));
        }
        Ok(Self(parts))
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// Where a corpus keeps a document's text and its set name.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    /// The text: `text` in the Pile, Dolma, RedPajama and FineWeb.
    pub text: FieldPath,
    /// The set name: `meta.pile_set_name` in the Pile.
    pub set: FieldPath,
}

impl Default for Fields {
    /// The Pile's fields.
    fn default() -> Self {
        Self {
            text: FieldPath(vec!["text".into()]),
            set: FieldPath::default_set(),
        }
    }
}

/// A stream of one corpus file's documents, JSONL or Parquet by the file's name.
pub enum Reader {
    /// A `.jsonl` or `.jsonl.zst` file.
    Jsonl(JsonlReader),
    /// A `.parquet` file.
    Parquet(ParquetReader),
}

impl Reader {
    /// Opens a Pile-format file (JSONL or Parquet with the Pile's fields).
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, &Fields::default(), 0)
    }

    /// Opens `path` with its fields at `fields`; `skip` is a hint that documents up to line (row)
    /// `skip` are not wanted (Parquet then skips whole row groups; the records still carry their
    /// place in the file).
    pub fn open_with(path: &Path, fields: &Fields, skip: u64) -> Result<Self> {
        if is_parquet(path) {
            Ok(Self::Parquet(ParquetReader::open(path, fields, skip)?))
        } else {
            Ok(Self::Jsonl(JsonlReader::open(path, fields)?))
        }
    }

    /// Bytes of the file read so far, for progress.
    pub fn position(&self) -> u64 {
        match self {
            Self::Jsonl(r) => r.position(),
            Self::Parquet(r) => r.position(),
        }
    }
}

impl Iterator for Reader {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Jsonl(r) => r.next(),
            Self::Parquet(r) => r.next(),
        }
    }
}

/// A corpus's set names mapped to task names (`--set-map FILE`): a TOML table of
/// `"corpus set name" = "task"`, the task a Pile task (`github`, stored as `Github`, so `pile_all`'s
/// weights apply) or a name of the user's own. Names the map does not list are kept as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetMap(BTreeMap<String, String>);

impl SetMap {
    /// Reads the map at `path`; a malformed file or a value that is not a string is bad input.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| Error::bad_toml(path, &text, &e))?;
        let mut map = BTreeMap::new();
        for (from, to) in table {
            let to = to.as_str().map(set_name).ok_or_else(|| {
                Error::bad_file(
                    path,
                    format!(
                        "`{from}` maps to {to}, not a task name; write `\"{from}\" = \"github\"`"
                    ),
                )
            })?;
            map.insert(from, to);
        }
        Ok(Self(map))
    }

    /// The set name stored for a document whose corpus calls its set `name`.
    pub fn apply(&self, name: String) -> String {
        match self.0.get(&name) {
            Some(to) => to.clone(),
            None => name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn set_maps_map_to_pile_names_and_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sets.toml");
        std::fs::write(
            &p,
            "RedPajamaGithub = \"github\"\n\"RedPajamaC4\" = \"c4\"\n",
        )
        .unwrap();
        let m = SetMap::load(&p).unwrap();
        assert_eq!(m.apply("RedPajamaGithub".into()), "Github");
        assert_eq!(m.apply("RedPajamaC4".into()), "c4");
        assert_eq!(m.apply("Other".into()), "Other");
        std::fs::write(&p, "a = \"github\"\nb = 3\n").unwrap();
        let e = SetMap::load(&p).unwrap_err().to_string();
        assert!(e.contains("`b` maps to 3, not a task name"), "{e}");
        std::fs::write(&p, "a = \"github\"\nb = \n").unwrap();
        let e = SetMap::load(&p).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("sets.toml:2: "), "{e}");
    }

    #[test]
    fn field_paths_parse_and_print() {
        let f: FieldPath = "meta.redpajama_set_name".parse().unwrap();
        assert_eq!(f.parts(), ["meta", "redpajama_set_name"]);
        assert_eq!(f.to_string(), "meta.redpajama_set_name");
        assert!("meta..x".parse::<FieldPath>().is_err());
        assert_eq!(Fields::default().set, FieldPath::default_set());
    }
}
