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

use crate::corpus::{self, FieldPath, Fields, SetMap};
use crate::embed::{BatchStats, Batching, Encoder};
use crate::error::{Error, Result};
use crate::store::{EncoderRecord, Store};
use crate::task::Shard;

mod pipeline;

use pipeline::InputFile;
pub use pipeline::StageSeconds;

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
    /// Most texts per encoder call. Texts are sorted by length in blocks of 1,024 documents and
    /// batched in that order, so a batch's padding is small.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Most positions per encoder call, padding included (texts × the longest): a batch of short
    /// texts may hold --batch-size of them, long ones fewer; 16,384 is 32 × 512.
    #[arg(long, default_value_t = 16384)]
    pub batch_tokens: usize,
    /// Documents per Lance commit (large commits keep the file count down).
    #[arg(long, default_value_t = 4096)]
    pub commit_rows: usize,
    /// Tokenize on a thread of its own, beside the encoder: `auto` does when the encoder is not on
    /// the CPU (on the CPU it already uses every core; tokenizing beside it made it slower).
    #[arg(long, value_enum, default_value_t = TokenizerThread::Auto)]
    pub tokenizer_thread: TokenizerThread,
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

/// Whether the ingest tokenizes on a thread of its own (`--tokenizer-thread`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenizerThread {
    /// When the encoder runs on a GPU.
    Auto,
    /// Always.
    On,
    /// Never: the encoder's thread tokenizes each block before embedding it.
    Off,
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
    /// A commit: `docs` documents of `bytes` text bytes; `input_pos` of `input_bytes` read so far;
    /// each stage's working seconds so far in the `seconds` the ingest has taken.
    Committed {
        docs: usize,
        bytes: u64,
        input_pos: u64,
        input_bytes: u64,
        stages: StageSeconds,
        seconds: f64,
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
    /// Seconds the ingest took, compaction included.
    pub seconds: f64,
    /// Documents added per second.
    pub docs_per_s: f64,
    /// Share of the encoder's computed positions that were padding.
    pub padding_fraction: f64,
    /// The encoder's calls: sequences, batches, tokens, padded positions.
    pub encoder_batches: BatchStats,
    /// Seconds each stage worked (they overlap: their sum can exceed `seconds`).
    pub stage_seconds: StageSeconds,
    /// Tokenizing had a thread of its own, beside the encoder (CUDA); on the CPU the encoder's
    /// thread tokenizes.
    pub tokenizer_thread: bool,
}

impl Ingest {
    /// The encoder's batching: at most `batch_size` texts and `batch_tokens` padded positions.
    pub fn batching(&self) -> Batching {
        Batching {
            max_rows: self.batch_size,
            max_tokens: self.batch_tokens,
        }
    }

    /// Refuses settings no ingest can run with, before anything is opened or written.
    pub fn check(&self) -> Result<()> {
        if self.shard.count > 1 && self.limit.is_some() {
            return Err(Error::setting(
                "limit",
                "--limit counts the whole store's documents: give it to an unsharded ingest",
            ));
        }
        for (name, flag, value) in [
            ("batch_size", "--batch-size", self.batch_size),
            ("batch_tokens", "--batch-tokens", self.batch_tokens),
            ("commit_rows", "--commit-rows", self.commit_rows),
        ] {
            if value == 0 {
                return Err(Error::setting(name, format!("{flag} must be at least 1")));
            }
        }
        Ok(())
    }

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
        self.check()?;
        let set_map = match &self.set_map {
            Some(p) => SetMap::load(p)?,
            None => SetMap::default(),
        };
        let record = encoder.record();
        let inputs = corpus::data_files(inputs, &self.split)?;
        for note in &inputs.notes {
            on_event(IngestEvent::Chose { note });
        }
        // Every file is checked and its resume point found before anything is read.
        let mut files = Vec::new();
        for f in &inputs.files {
            let path = std::fs::canonicalize(f).map_err(|e| Error::io(f, e))?;
            let bytes = std::fs::metadata(&path).map_err(|e| Error::io(f, e))?.len();
            let source = path.display().to_string();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(other) = store.other_source_with_prefix(&format!("{name}:"), &source)? {
                return Err(Error::bad_file(&path, format!("ids are `{name}:LINE` and another file of that name is already in the store: {other}")));
            }
            let resume = store.max_line(&source, self.shard)?.unwrap_or(0);
            files.push(InputFile {
                path,
                source,
                name,
                resume,
                bytes,
            });
        }
        let input_bytes = files.iter().map(|f| f.bytes).sum();
        on_event(IngestEvent::Started { input_bytes });
        for f in files.iter().filter(|f| f.resume > 0) {
            on_event(IngestEvent::Resuming {
                path: &f.path,
                line: f.resume,
            });
        }
        let sources: Vec<String> = files.iter().map(|f| f.source.clone()).collect();
        let filter = pipeline::Filter {
            fields: Fields {
                text: self.text_field.clone(),
                set: self.set_field.clone(),
            },
            set_map,
            wanted: self.sets.iter().map(|s| corpus::set_name(s)).collect(),
            have: store.count_from(&sources)?,
            ingest: self,
        };
        let outcome = pipeline::run(&filter, &files, store, encoder, &mut |c| {
            on_event(IngestEvent::Committed {
                docs: c.docs,
                bytes: c.bytes,
                input_pos: c.input_pos,
                input_bytes,
                stages: c.stages,
                seconds: start.elapsed().as_secs_f64(),
            })
        })?;
        let added = outcome.added;
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
        let seconds = start.elapsed().as_secs_f64();
        Ok(IngestSummary {
            added,
            documents: store.count()?,
            skipped_bad: outcome.bad_lines.len(),
            bad_lines: outcome.bad_lines,
            store: store.path().display().to_string(),
            encoder: record,
            seconds,
            docs_per_s: added as f64 / seconds.max(1e-9),
            padding_fraction: outcome.batches.padding_fraction(),
            encoder_batches: outcome.batches,
            stage_seconds: outcome.stages,
            tokenizer_thread: outcome.tokenizer_thread,
        })
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
            (
                d.split.as_str(),
                d.batch_size,
                d.batch_tokens,
                d.commit_rows
            ),
            ("train", 32, 16384, 4096)
        );
        assert!(d.sets.is_empty() && d.limit.is_none() && !d.skip_bad);
    }
}
