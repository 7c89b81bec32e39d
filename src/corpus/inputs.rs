//! The data files an ingest reads: files as given, directories (a Hugging Face dataset's, a
//! download of shards) as the corpus files under them, in path order.
use std::path::{Path, PathBuf};

use super::{is_jsonl, is_parquet};
use crate::error::{Error, Result};

/// The splits a Hugging Face dataset's file layout names.
const SPLITS: &[&str] = &["train", "validation", "test"];

/// The files to ingest, and what was chosen from each directory (for the user).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataFiles {
    /// Corpus files, in order.
    pub files: Vec<PathBuf>,
    /// One line per directory whose files were narrowed to a split.
    pub notes: Vec<String>,
}

/// The corpus files of `paths`: a file as given; a directory as the `.parquet`, `.jsonl` and
/// `.jsonl.zst` files under it (hidden directories such as `.git` or `.cache` skipped), sorted by
/// path. A directory whose files name several splits the way Hugging Face datasets do
/// (`data/train-00000-of-00002.parquet`, `train/0000.parquet`) gives only `split`'s files.
pub fn data_files(paths: &[PathBuf], split: &str) -> Result<DataFiles> {
    let mut out = DataFiles::default();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        if !meta.is_dir() {
            out.files.push(p.clone());
            continue;
        }
        let mut found = Vec::new();
        walk(p, &mut found)?;
        found.sort();
        if found.is_empty() {
            return Err(Error::bad_file(
                p,
                "the directory holds no .parquet, .jsonl or .jsonl.zst files",
            ));
        }
        let splits: Vec<Option<&str>> = found.iter().map(|f| split_of(p, f)).collect();
        let mut named: Vec<&str> = splits.iter().flatten().copied().collect();
        named.sort();
        named.dedup();
        if named.len() > 1 {
            if !named.contains(&split) {
                return Err(Error::bad_file(
                    p,
                    format!(
                        "the directory holds the splits {} but not `{split}`: give --split one of them",
                        named.join(", ")
                    ),
                ));
            }
            let keep: Vec<PathBuf> = found
                .iter()
                .zip(&splits)
                .filter(|(_, s)| **s == Some(split))
                .map(|(f, _)| f.clone())
                .collect();
            out.notes.push(format!(
                "{}: {} of its {} files, the {split} split's (it holds {})",
                p.display(),
                keep.len(),
                found.len(),
                named.join(", ")
            ));
            out.files.extend(keep);
        } else {
            out.files.extend(found);
        }
    }
    Ok(out)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        // Follow links to directories: a dataset's shards are often links into a cache.
        let is_dir = kind.is_dir() || (kind.is_symlink() && path.is_dir());
        if is_dir && !hidden {
            walk(&path, found)?;
        } else if !is_dir && !hidden && (is_parquet(&path) || is_jsonl(&path)) {
            found.push(path);
        }
    }
    Ok(())
}

/// The split `file` (under `dir`) belongs to by Hugging Face's layouts: a directory named for it,
/// or a file name starting `train-`, `train.`, `train_`.
fn split_of<'a>(dir: &Path, file: &Path) -> Option<&'a str> {
    let rel = file.strip_prefix(dir).ok()?;
    let parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().to_lowercase())
        .collect();
    let (name, dirs) = parts.split_last()?;
    SPLITS.iter().copied().find(|s| {
        dirs.iter().any(|d| d == s)
            || [b'-', b'.', b'_'].iter().any(|sep| {
                name.strip_prefix(s)
                    .is_some_and(|r| r.as_bytes().first() == Some(sep))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn a_dataset_directory_gives_the_split_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("pile");
        for f in [
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/validation-00000-of-00001.parquet",
            "README.md",
            ".cache/huggingface/x.parquet",
        ] {
            touch(&d.join(f));
        }
        let got = data_files(std::slice::from_ref(&d), "train").unwrap();
        assert_eq!(
            got.files,
            [
                d.join("data/train-00000-of-00002.parquet"),
                d.join("data/train-00001-of-00002.parquet")
            ]
        );
        assert!(got.notes[0].contains("2 of its 3 files, the train split's"));
        let e = data_files(std::slice::from_ref(&d), "test").unwrap_err();
        assert!(
            e.to_string()
                .contains("holds the splits train, validation but not `test`"),
            "{e}"
        );
        // Layout of the parquet-converter branch: train/0000.parquet.
        let c = dir.path().join("converted");
        touch(&c.join("default/train/0000.parquet"));
        touch(&c.join("default/test/0000.parquet"));
        let got = data_files(std::slice::from_ref(&c), "test").unwrap();
        assert_eq!(got.files, [c.join("default/test/0000.parquet")]);
        // One split (or none named): everything, in path order; files pass through as given.
        let j = dir.path().join("jsonl");
        touch(&j.join("b.jsonl.zst"));
        touch(&j.join("a/c.jsonl"));
        let got = data_files(&[j.clone(), d.join("README.md")], "train").unwrap();
        assert_eq!(
            got.files,
            [
                j.join("a/c.jsonl"),
                j.join("b.jsonl.zst"),
                d.join("README.md")
            ]
        );
        assert!(got.notes.is_empty());
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(data_files(&[empty], "train").is_err());
    }
}
