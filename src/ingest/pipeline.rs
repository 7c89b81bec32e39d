//! The ingest's four stages, each on its own thread, joined by bounded queues so that reading,
//! tokenizing, embedding and writing overlap and memory stays bounded by what the queues hold:
//!
//! ```text
//! read (decompress, parse, filter) → tokenize (all cores) → embed (the encoder) → write (Lance)
//! ```
//!
//! With the encoder on the CPU, tokenizing runs on the encoder's thread, before each block's
//! forward passes, instead of beside them (see [`run`]).
//!
//! Documents travel in blocks of at most [`BLOCK_ROWS`] documents of one file, in line order; a
//! block is also the window the encoder sorts by length. The reader decides where each commit ends
//! (`commit_rows`, [`super::COMMIT_BYTES`], a file's end, `--limit`) and marks that commit's last
//! block; the writer commits when it receives that block. A stage that fails stops taking input, so
//! the stages before it stop too; the writer commits whatever it has been given, all of it lines
//! before the failure, so a re-run resumes right after the last good line.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use crate::corpus::{Fields, Reader, Record, SetMap};
use crate::embed::{BatchStats, Batching, Encoder, TextTokenizer};
use crate::error::{Error, Result};
use crate::store::{Document, Store};

use super::{doc_id, Ingest, TokenizerThread, COMMIT_BYTES};

/// Most documents in a block: the encoder's sort window. 1,024 leaves 2% of a length-mixed batch
/// of 32 as padding where 256 leaves 8% (docs/benchmarks.md, "Ingest end to end").
pub const BLOCK_ROWS: usize = 1024;

/// Text bytes after which a block is cut regardless of its rows: bounds what the queues hold.
const BLOCK_BYTES: usize = 8 << 20;

/// Blocks waiting between two stages: enough to ride out one slow block, little memory.
const QUEUE: usize = 2;

/// One input file as the pipeline reads it.
pub(super) struct InputFile {
    /// The file's absolute path (stored as the `source` column).
    pub path: std::path::PathBuf,
    /// `path` as stored.
    pub source: String,
    /// File name, the prefix of its documents' ids.
    pub name: String,
    /// Lines up to this one are already stored.
    pub resume: u64,
    /// Size in bytes, for progress.
    pub bytes: u64,
}

/// Seconds each stage spent working (not waiting for its neighbours) so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StageSeconds {
    /// Reading, decompressing and parsing the input, filtering by set and shard.
    pub read: f64,
    /// Tokenizing.
    pub tokenize: f64,
    /// The encoder's forward passes and pooling.
    pub embed: f64,
    /// Building Lance batches and committing them.
    pub write: f64,
}

impl StageSeconds {
    /// The stage that worked longest, the one that sets the pace.
    pub fn slowest(&self) -> &'static str {
        [
            ("read", self.read),
            ("tokenize", self.tokenize),
            ("embed", self.embed),
            ("write", self.write),
        ]
        .into_iter()
        .fold(("read", f64::MIN), |a, b| if b.1 > a.1 { b } else { a })
        .0
    }
}

/// The stages' working time, shared by the stages' threads.
#[derive(Default)]
struct Clock {
    nanos: [AtomicU64; 4],
}

impl Clock {
    fn time<T>(&self, stage: usize, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.nanos[stage].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    fn seconds(&self) -> StageSeconds {
        let s = |i: usize| self.nanos[i].load(Ordering::Relaxed) as f64 / 1e9;
        StageSeconds {
            read: s(READ),
            tokenize: s(TOKENIZE),
            embed: s(EMBED),
            write: s(WRITE),
        }
    }
}

const READ: usize = 0;
const TOKENIZE: usize = 1;
const EMBED: usize = 2;
const WRITE: usize = 3;

/// Documents of one file, in line order.
struct Block {
    file: usize,
    records: Vec<Record>,
    /// Bytes of all input read when the block was cut.
    input_pos: u64,
    /// The commit ends with this block.
    commit: bool,
}

/// A commit the writer made, as the coordinator reports it.
pub(super) struct Committed {
    pub docs: usize,
    pub bytes: u64,
    pub input_pos: u64,
    pub stages: StageSeconds,
}

/// What the pipeline did.
pub(super) struct Outcome {
    pub added: usize,
    pub bad_lines: Vec<String>,
    pub batches: BatchStats,
    pub stages: StageSeconds,
    /// Tokenizing had a thread of its own (the encoder is not on the CPU).
    pub tokenizer_thread: bool,
}

/// What the reader filters by, resolved from the settings once.
pub(super) struct Filter<'a> {
    pub fields: Fields,
    pub set_map: SetMap,
    /// `--sets` as stored set names; empty: all.
    pub wanted: Vec<String>,
    /// Documents the store already holds from these files (`--limit` counts them).
    pub have: usize,
    pub ingest: &'a Ingest,
}

/// Runs the four stages over `files`; `on_commit` is called on this thread after every commit.
pub(super) fn run(
    filter: &Filter,
    files: &[InputFile],
    store: &Store,
    encoder: &mut Encoder,
    on_commit: &mut dyn FnMut(Committed),
) -> Result<Outcome> {
    let clock = Clock::default();
    let tokenizer = encoder.tokenizer();
    // On a GPU the encoder leaves the CPU's cores free, so tokenizing is a stage of its own; on
    // the CPU the encoder already runs on every core, and tokenizing beside it only made ONNX
    // Runtime's threads wait for each other (MiniLM, 2 cores: 5% slower), so by default the
    // encoder's thread tokenizes each block itself and reading and writing overlap it.
    let tokenizer_thread = match filter.ingest.tokenizer_thread {
        TokenizerThread::On => true,
        TokenizerThread::Off => false,
        TokenizerThread::Auto => encoder.provider() != "CPUExecutionProvider",
    };
    let (to_tokenize, read_out) = sync_channel::<Block>(QUEUE);
    let (to_write, embedded) = sync_channel::<(Block, Vec<Vec<f32>>)>(QUEUE);
    let (report, reports) = std::sync::mpsc::channel::<Committed>();
    let batching = filter.ingest.batching();
    let clock = &clock;
    std::thread::scope(|s| {
        let reader = s.spawn(move || read(filter, files, clock, to_tokenize));
        let (tokenizer, encoder) = if tokenizer_thread {
            let (to_embed, tokenized) = sync_channel(QUEUE);
            let t = s.spawn(move || {
                for block in read_out {
                    let block = tokenize(&tokenizer, clock, block)?;
                    if to_embed.send(block).is_err() {
                        break;
                    }
                }
                Ok(())
            });
            let input = tokenized.into_iter().map(Ok);
            (
                Some(t),
                s.spawn(move || embed(encoder, batching, clock, input, to_write)),
            )
        } else {
            let input = read_out
                .into_iter()
                .map(move |b| tokenize(&tokenizer, clock, b));
            (
                None,
                s.spawn(move || embed(encoder, batching, clock, input, to_write)),
            )
        };
        let writer = s.spawn(move || write(filter.ingest, files, store, clock, embedded, report));
        for c in reports {
            on_commit(c);
        }
        let joined = |name: &str| Error::internal(format!("the ingest's {name} thread panicked"));
        // The first failure in pipeline order is the cause; later stages only saw their input end.
        let read = reader.join().map_err(|_| joined("reader"))?;
        let tokenized = match tokenizer {
            Some(t) => t.join().map_err(|_| joined("tokenizer"))?,
            None => Ok(()),
        };
        let embedded = encoder.join().map_err(|_| joined("encoder"))?;
        let written = writer.join().map_err(|_| joined("writer"))?;
        let bad_lines = read?;
        tokenized?;
        let batches = embedded?;
        let added = written?;
        Ok(Outcome {
            added,
            bad_lines,
            batches,
            stages: clock.seconds(),
            tokenizer_thread,
        })
    })
}

/// The read stage: every file's wanted documents in blocks; returns the bad lines skipped.
fn read(
    filter: &Filter,
    files: &[InputFile],
    clock: &Clock,
    out: SyncSender<Block>,
) -> Result<Vec<String>> {
    let ingest = filter.ingest;
    let owns = |line: u64| ingest.shard.owns(line as usize - 1);
    let block_rows = BLOCK_ROWS.min(ingest.commit_rows);
    let mut bad = Vec::new();
    let mut sent = 0usize;
    let mut done_bytes = 0u64;
    for (f, file) in files.iter().enumerate() {
        let mut reader = clock.time(READ, || {
            Reader::open_with(&file.path, &filter.fields, file.resume)
        })?;
        let (mut commit_rows, mut commit_bytes) = (0usize, 0usize);
        let mut block = Vec::new();
        let mut block_bytes = 0usize;
        // Sends the block; `commit` ends the commit with it. False: the pipeline stopped.
        let send = |block: &mut Vec<Record>, commit: bool, pos: u64| {
            let records = std::mem::take(block);
            out.send(Block {
                file: f,
                records,
                input_pos: done_bytes + pos,
                commit,
            })
            .is_ok()
        };
        let mut limit_reached = false;
        let failure = loop {
            if ingest
                .limit
                .is_some_and(|l| filter.have + sent + block.len() >= l)
            {
                limit_reached = true;
                break None;
            }
            let Some(item) = clock.time(READ, || reader.next()) else {
                break None;
            };
            let rec = match item {
                Ok(r) if !owns(r.line) || r.line <= file.resume => continue,
                Ok(r) => match keep(filter, r) {
                    Some(r) => r,
                    None => continue,
                },
                // Another worker's line: its owner reports it.
                Err(Error::BadInput { line: Some(l), .. }) if !owns(l) => continue,
                Err(e @ Error::BadInput { line: Some(_), .. }) if ingest.skip_bad => {
                    bad.push(e.to_string());
                    continue;
                }
                Err(e) => break Some(e),
            };
            block_bytes += rec.text.len();
            commit_bytes += rec.text.len();
            commit_rows += 1;
            block.push(rec);
            let commit = commit_rows >= ingest.commit_rows || commit_bytes >= COMMIT_BYTES;
            if commit || block.len() >= block_rows || block_bytes >= BLOCK_BYTES {
                sent += block.len();
                if !send(&mut block, commit, reader.position()) {
                    return Ok(bad);
                }
                block_bytes = 0;
                if commit {
                    (commit_rows, commit_bytes) = (0, 0);
                }
            }
        };
        // The rest of the file's commit, also before a bad line or at the limit: nothing read and
        // wanted is lost.
        if commit_rows > 0 {
            sent += block.len();
            if !send(&mut block, true, reader.position()) {
                return Ok(bad);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if limit_reached {
            break;
        }
        done_bytes += file.bytes;
    }
    Ok(bad)
}

/// The record with its set name as stored, or `None` when `--sets` leaves it out.
fn keep(filter: &Filter, mut rec: Record) -> Option<Record> {
    let raw = rec
        .set_name
        .take()
        .or_else(|| filter.ingest.default_set.clone())
        .unwrap_or_default();
    let set = filter.set_map.apply(raw.clone());
    // `--sets` names a set by its task or by the corpus's own name for it.
    let wanted_set = |w: &String| w.eq_ignore_ascii_case(&set) || *w == raw;
    if !filter.wanted.is_empty() && !filter.wanted.iter().any(wanted_set) {
        return None;
    }
    rec.set_name = Some(set);
    Some(rec)
}

/// A block with its texts tokenized.
fn tokenize(
    tokenizer: &TextTokenizer,
    clock: &Clock,
    block: Block,
) -> Result<(Block, Vec<Vec<u32>>)> {
    let ids = clock.time(TOKENIZE, || {
        let texts: Vec<&str> = block.records.iter().map(|r| r.text.as_str()).collect();
        tokenizer.token_ids_batch(&texts)
    })?;
    Ok((block, ids))
}

/// The embed stage: each tokenized block's embeddings, in order; returns what the batches computed.
fn embed(
    encoder: &mut Encoder,
    batching: Batching,
    clock: &Clock,
    input: impl Iterator<Item = Result<(Block, Vec<Vec<u32>>)>>,
    out: SyncSender<(Block, Vec<Vec<f32>>)>,
) -> Result<BatchStats> {
    let mut stats = BatchStats::default();
    for item in input {
        let (block, ids) = item?;
        let embedded = clock.time(EMBED, || encoder.embed_token_ids(&ids, batching))?;
        stats.add(embedded.stats);
        if out.send((block, embedded.embeddings)).is_err() {
            break;
        }
    }
    Ok(stats)
}

/// The write stage: builds each commit's documents and commits them; returns the documents added.
fn write(
    ingest: &Ingest,
    files: &[InputFile],
    store: &Store,
    clock: &Clock,
    input: Receiver<(Block, Vec<Vec<f32>>)>,
    report: std::sync::mpsc::Sender<Committed>,
) -> Result<usize> {
    let mut added = 0;
    let mut docs: Vec<Document> = Vec::new();
    let mut input_pos = 0;
    let mut commit = |docs: &mut Vec<Document>, input_pos: u64| -> Result<()> {
        if docs.is_empty() {
            return Ok(());
        }
        clock.time(WRITE, || store.add(docs))?;
        added += docs.len();
        let bytes = docs.iter().map(|d| d.text.len() as u64).sum();
        let _ = report.send(Committed {
            docs: docs.len(),
            bytes,
            input_pos,
            stages: clock.seconds(),
        });
        docs.clear();
        Ok(())
    };
    for (block, embeddings) in input {
        let file = &files[block.file];
        clock.time(WRITE, || {
            docs.extend(
                block
                    .records
                    .into_iter()
                    .zip(embeddings)
                    .map(|(r, embedding)| Document {
                        id: doc_id(&file.name, r.line),
                        split: ingest.split.clone(),
                        set_name: r.set_name.unwrap_or_default(),
                        source: file.source.clone(),
                        line: r.line,
                        text: r.text,
                        embedding,
                    }),
            )
        });
        input_pos = block.input_pos;
        if block.commit {
            commit(&mut docs, input_pos)?;
        }
    }
    // The input ended early (a stage before failed): keep what was embedded.
    commit(&mut docs, input_pos)?;
    Ok(added)
}
