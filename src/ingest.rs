//! Ingest: corpus files (JSONL(.zst), Parquet, directories of them) streamed into the corpus store
//! with encoder embeddings.
//!
//! Resumable and idempotent: documents are appended in line order, each commit atomic, and a re-run
//! starts after the highest line of each file already stored — after a crash (even `kill -9`) the
//! same command ends with exactly the rows of an uninterrupted run. A document's id is
//! `FILE_NAME:LINE` ([`doc_id`]; a Parquet file's row stands for its line), so two files of one
//! name cannot share a store.
//!
//! Sharded (`--shard I/N`): N processes (GPUs, machines) ingest one set of files into one store at
//! once, worker I taking lines I+1, I+1+N, ... of every file. Each appends its own commits (Lance
//! commits concurrent appends one after another, rebasing a commit that finds a newer version) and
//! resumes after the highest line of its own share, so a worker killed with -9 and re-run adds
//! nothing twice. Workers do not compact; an unsharded `tttnn ingest` of the same files afterwards
//! adds nothing and merges the workers' small files.
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::corpus::{self, FieldPath, Fields, Reader, Record, SetMap};
use crate::embed::Encoder;
use crate::error::{Error, Result};
use crate::store::{Document, EncoderRecord, Store};
use crate::task::Shard;

/// Text bytes buffered before a commit regardless of `commit_rows`: bounds memory on Books3-sized
/// documents.
pub const COMMIT_BYTES: usize = 64 << 20;

/// The id of the document on line `line` of the file called `file_name`.
pub fn doc_id(file_name: &str, line: u64) -> String {
    format!("{file_name}:{line}")
}

/// What to ingest and how: `tttnn ingest`'s flags, defaults written once (here).
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Ingest {
    /// Split recorded with each document.
    #[arg(long, default_value = "train", value_parser = ["train", "validation", "test"])]
    pub split: String,
    /// Keep only these sets (task names like `github` or Pile names like `Github`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub sets: Vec<String>,
    /// Set name for documents without one at the set field.
    #[arg(long = "set-name")]
    pub default_set: Option<String>,
    /// Where a document's text is: a field path (`text`; `content`; `meta.body`).
    #[arg(long, default_value = "text")]
    pub text_field: FieldPath,
    /// Where a document's set name is: a field path (the Pile's `meta.pile_set_name`; Dolma's
    /// `source`; RedPajama's `meta.redpajama_set_name`).
    #[arg(long, default_value = "meta.pile_set_name")]
    pub set_field: FieldPath,
    /// TOML file mapping the corpus's set names to task names (`"RedPajamaGithub" = "github"`):
    /// the stored set name is the task's, so `--task pile_github` and `pile_all`'s weights apply.
    #[arg(long)]
    pub set_map: Option<PathBuf>,
    /// Stop once the store holds this many documents from these files.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Texts per encoder call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Documents per Lance commit (large commits keep the file count down).
    #[arg(long, default_value_t = 4096)]
    pub commit_rows: usize,
    /// Skip malformed lines (bad JSON, invalid UTF-8, no `text`), count and report them.
    #[arg(long)]
    pub skip_bad: bool,
    /// This worker's share I/N: lines I+1, I+1+N, ... of every file; N workers ingest at once.
    #[arg(long, env = "TTTNN_SHARD", default_value_t = Shard::ALL)]
    pub shard: Shard,
}

impl Default for Ingest {
    /// The declared defaults.
    fn default() -> Self {
        crate::settings::declared_defaults()
    }
}

/// What an ingest reports while it works.
#[derive(Debug, Clone)]
pub enum IngestEvent<'a> {
    /// A directory's files were narrowed to the split's (`note` says which).
    Chose { note: &'a str },
    /// The input files are open: `input_bytes` to read in all.
    Started { input_bytes: u64 },
    /// `path` was partly ingested before: lines up to `line` are skipped.
    Resuming { path: &'a Path, line: u64 },
    /// A commit: `docs` documents of `bytes` text bytes; `input_pos` of `input_bytes` read so far.
    Committed {
        docs: usize,
        bytes: u64,
        input_pos: u64,
        input_bytes: u64,
    },
    /// Merging the small files the commits left.
    Compacting,
}

/// What an ingest did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IngestSummary {
    /// Documents added by this ingest.
    pub added: usize,
    /// Documents in the store now.
    pub documents: usize,
    /// The malformed lines skipped (`--skip-bad`), each as its error.
    #[serde(skip)]
    pub bad_lines: Vec<String>,
    /// Number of malformed lines skipped.
    pub skipped_bad: usize,
    /// The store.
    pub store: String,
    /// The encoder build that embedded them.
    pub encoder: EncoderRecord,
    /// Seconds the ingest took.
    #[serde(skip)]
    pub seconds: f64,
}

impl Ingest {
    /// Ingests `inputs` (files, directories of corpus files) into `store` with `encoder`.
    pub fn run(
        &self,
        store: &Store,
        encoder: &mut Encoder,
        inputs: &[PathBuf],
        on_event: &mut dyn FnMut(IngestEvent),
    ) -> Result<IngestSummary> {
        let start = Instant::now();
        let sharded = self.shard.count > 1;
        if sharded && self.limit.is_some() {
            return Err(Error::setting(
                "limit",
                "--limit counts the whole store's documents: give it to an unsharded ingest",
            ));
        }
        let owns = |line: u64| self.shard.owns(line as usize - 1);
        let wanted: Vec<String> = self.sets.iter().map(|s| corpus::set_name(s)).collect();
        let set_map = match &self.set_map {
            Some(p) => SetMap::load(p)?,
            None => SetMap::default(),
        };
        let fields = Fields {
            text: self.text_field.clone(),
            set: self.set_field.clone(),
        };
        let record = encoder.record();
        let inputs = corpus::data_files(inputs, &self.split)?;
        for note in &inputs.notes {
            on_event(IngestEvent::Chose { note });
        }
        let mut sources = Vec::new();
        let mut input_bytes = 0;
        for f in &inputs.files {
            let abs = std::fs::canonicalize(f).map_err(|e| Error::io(f, e))?;
            input_bytes += std::fs::metadata(&abs).map_err(|e| Error::io(f, e))?.len();
            sources.push(abs);
        }
        on_event(IngestEvent::Started { input_bytes });
        let source_names: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
        let mut have = store.count_from(&source_names)?;
        let mut batch = Batch {
            ingest: self,
            store,
            encoder,
            pending: Vec::new(),
            pending_bytes: 0,
            added: 0,
            done_bytes: 0,
            input_bytes,
        };
        let mut bad = Vec::new();
        'files: for (path, source) in sources.iter().zip(&source_names) {
            let file_name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(other) = store.other_source_with_prefix(&format!("{file_name}:"), source)? {
                return Err(Error::bad_file(path, format!("ids are `{file_name}:LINE` and another file of that name is already in the store: {other}")));
            }
            let resume = store.max_line(source, self.shard)?.unwrap_or(0);
            if resume > 0 {
                on_event(IngestEvent::Resuming { path, line: resume });
            }
            let mut reader = Reader::open_with(path, &fields, resume)?;
            let file = Source {
                name: &file_name,
                path: source,
            };
            loop {
                if self.limit.is_some_and(|l| have + batch.pending.len() >= l) {
                    batch.flush(&file, reader.position(), on_event)?;
                    break 'files;
                }
                let Some(item) = reader.next() else { break };
                let mut rec = match item {
                    Ok(r) if !owns(r.line) => continue,
                    Ok(r) => r,
                    // Another worker's line: its owner reports it.
                    Err(Error::BadInput { line: Some(l), .. }) if !owns(l) => continue,
                    Err(e @ Error::BadInput { line: Some(_), .. }) if self.skip_bad => {
                        bad.push(e.to_string());
                        continue;
                    }
                    Err(e) => {
                        // Keep everything before the bad line: a re-run resumes right there.
                        batch.flush(&file, reader.position(), on_event)?;
                        return Err(e);
                    }
                };
                if rec.line <= resume {
                    continue;
                }
                let raw = rec
                    .set_name
                    .take()
                    .or_else(|| self.default_set.clone())
                    .unwrap_or_default();
                let set = set_map.apply(raw.clone());
                // `--sets` names a set by its task or by the corpus's own name for it.
                let wanted_set = |w: &String| w.eq_ignore_ascii_case(&set) || *w == raw;
                if !wanted.is_empty() && !wanted.iter().any(wanted_set) {
                    continue;
                }
                rec.set_name = Some(set);
                batch.pending_bytes += rec.text.len();
                batch.pending.push(rec);
                if batch.pending.len() >= self.commit_rows || batch.pending_bytes >= COMMIT_BYTES {
                    have += batch.pending.len();
                    batch.flush(&file, reader.position(), on_event)?;
                }
            }
            have += batch.pending.len();
            batch.flush(&file, reader.position(), on_event)?;
            batch.done_bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        }
        let added = batch.added;
        if added > 0 && self.shard.index == 0 {
            // One writer of the store's config among shards: worker 0.
            store.record_encoder(&record)?;
        }
        // Workers leave the merge to an unsharded ingest, which merges what they left even when
        // it adds nothing itself.
        if !sharded && (added > 0 || store.fragments()? > 1) {
            on_event(IngestEvent::Compacting);
            store.compact()?;
        }
        Ok(IngestSummary {
            added,
            documents: store.count()?,
            skipped_bad: bad.len(),
            bad_lines: bad,
            store: store.path().display().to_string(),
            encoder: record,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// The file being read: its name (for ids) and full path (the `source` column).
struct Source<'a> {
    name: &'a str,
    path: &'a str,
}

/// Records read but not yet committed, and the running totals.
struct Batch<'a> {
    ingest: &'a Ingest,
    store: &'a Store,
    encoder: &'a mut Encoder,
    /// Records to commit, each with its set name as stored (default and map applied).
    pending: Vec<Record>,
    pending_bytes: usize,
    added: usize,
    done_bytes: u64,
    input_bytes: u64,
}

impl Batch<'_> {
    /// Embeds and commits the pending records; `pos` is the reader's position in the file.
    fn flush(
        &mut self,
        file: &Source,
        pos: u64,
        on_event: &mut dyn FnMut(IngestEvent),
    ) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let texts: Vec<&str> = self.pending.iter().map(|r| r.text.as_str()).collect();
        let embeddings = self.encoder.embed(&texts, self.ingest.batch_size)?;
        let docs: Vec<Document> = std::mem::take(&mut self.pending)
            .into_iter()
            .zip(embeddings)
            .map(|(r, embedding)| Document {
                id: doc_id(file.name, r.line),
                split: self.ingest.split.clone(),
                set_name: r.set_name.unwrap_or_default(),
                source: file.path.to_string(),
                line: r.line,
                text: r.text,
                embedding,
            })
            .collect();
        let bytes: u64 = docs.iter().map(|d| d.text.len() as u64).sum();
        self.store.add(&docs)?;
        self.added += docs.len();
        self.pending_bytes = 0;
        on_event(IngestEvent::Committed {
            docs: docs.len(),
            bytes,
            input_pos: self.done_bytes + pos,
            input_bytes: self.input_bytes,
        });
        Ok(())
    }
}

/// The ingest protocol's questions to the store, kept with the protocol (as lance keeps each
/// concern of `Dataset` in its own file).
impl Store {
    /// Highest line of `source` in `shard`'s share already stored: ingest resumes after it.
    fn max_line(&self, source: &str, shard: Shard) -> Result<Option<u64>> {
        let batches = self.scan(
            Some(format!("source = {}", crate::store::sql_str(source))),
            &["line"],
            None,
        )?;
        let mut max = None;
        for b in &batches {
            max = max.max(
                crate::store::u64_column(&self.path, b, "line")?
                    .into_iter()
                    .filter(|&l| shard.owns(l as usize - 1))
                    .max(),
            );
        }
        Ok(max)
    }

    /// A source other than `source` whose ids start with `prefix`, if any.
    fn other_source_with_prefix(&self, prefix: &str, source: &str) -> Result<Option<String>> {
        use crate::store::sql_str;
        let batches = self.scan(
            Some(format!(
                "starts_with(id, {}) AND source <> {}",
                sql_str(prefix),
                sql_str(source)
            )),
            &["source"],
            Some(1),
        )?;
        match batches.iter().find(|b| b.num_rows() > 0) {
            Some(b) => Ok(crate::store::string_column(&self.path, b, "source")?
                .into_iter()
                .next()),
            None => Ok(None),
        }
    }

    /// Number of rows from any of `sources`.
    fn count_from(&self, sources: &[String]) -> Result<usize> {
        if sources.is_empty() {
            return Ok(0);
        }
        let list: Vec<String> = sources.iter().map(|s| crate::store::sql_str(s)).collect();
        self.block_on(
            self.table
                .count_rows(Some(format!("source IN ({})", list.join(", ")))),
        )
        .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_file_name_and_line() {
        assert_eq!(doc_id("train.jsonl", 7), "train.jsonl:7");
    }

    #[test]
    fn defaults_are_the_flags_defaults() {
        let d = Ingest::default();
        assert_eq!(
            (d.split.as_str(), d.batch_size, d.commit_rows),
            ("train", 32, 4096)
        );
        assert!(d.sets.is_empty() && d.limit.is_none() && !d.skip_bad);
    }
}
