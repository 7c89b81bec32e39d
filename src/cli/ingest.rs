//! `tttnn ingest`: stream Pile JSONL(.zst) into the LanceDB corpus store with encoder embeddings.
//!
//! Resumable and idempotent: documents are appended in line order, each commit atomic, and a re-run
//! starts after the highest line of each file already stored — after a crash (even `kill -9`) the
//! same command ends with exactly the rows of an uninterrupted run.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use crate::corpus::{self, Reader};
use crate::embed::{self, Encoder};
use crate::error::{Error, Result};
use crate::store::{Document, Store};

/// Ingest Pile JSONL (or .jsonl.zst) files into the corpus store.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pile JSONL files: `{"text": ..., "meta": {"pile_set_name": ...}}` per line.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The LanceDB store directory (created if absent).
    #[arg(long, env = "TTTNN_STORE")]
    pub store: PathBuf,
    /// Encoder directory: model.onnx, tokenizer.json, config.json.
    #[arg(long, env = "TTTNN_ENCODER")]
    pub encoder: PathBuf,
    /// Split recorded with each document.
    #[arg(long, default_value = "train", value_parser = ["train", "validation", "test"])]
    pub split: String,
    /// Keep only these sets (task names like `github` or Pile names like `Github`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub sets: Vec<String>,
    /// Set name for lines without `meta.pile_set_name`.
    #[arg(long)]
    pub set_name: Option<String>,
    /// Stop once the store holds this many documents from these files.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Texts per encoder call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Documents per Lance commit (large commits keep the file count down).
    #[arg(long, default_value_t = 4096)]
    pub commit_rows: usize,
    /// Where the encoder runs.
    #[arg(long, value_enum, default_value_t = embed::Device::Cpu, env = "TTTNN_ENCODER_DEVICE")]
    pub device: embed::Device,
    /// Encoder precision: fp32 (the original's), or the departures tf32 and fp16 (CUDA only).
    #[arg(long, value_enum, default_value_t = embed::Precision::Fp32, env = "TTTNN_ENCODER_PRECISION")]
    pub precision: embed::Precision,
    /// Skip malformed lines (bad JSON, invalid UTF-8, no `text`), count and report them.
    #[arg(long)]
    pub skip_bad: bool,
}

/// Text bytes buffered before a commit regardless of `commit_rows`: bounds memory on Books3-sized documents.
const COMMIT_BYTES: usize = 64 << 20;

struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    start: Instant,
    last_log: Instant,
    docs: u64,
    bytes: u64,
    total_bytes: u64,
}

impl Progress {
    fn new(total_bytes: u64, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total_bytes);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .expect("valid template"),
            );
            b
        });
        Self {
            bar,
            quiet,
            start: Instant::now(),
            last_log: Instant::now(),
            docs: 0,
            bytes: 0,
            total_bytes,
        }
    }

    fn update(&mut self, file_pos: u64, docs: u64, bytes: u64) {
        self.docs += docs;
        self.bytes += bytes;
        let rate = self.docs as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        if let Some(b) = &self.bar {
            b.set_position(file_pos);
            b.set_message(format!("{} docs, {rate:.1} docs/s", self.docs));
        } else if !self.quiet && self.last_log.elapsed().as_secs() >= 10 {
            self.last_log = Instant::now();
            let mb = self.bytes as f64 / 1e6 / self.start.elapsed().as_secs_f64().max(1e-9);
            let eta = (self.total_bytes.saturating_sub(file_pos)) as f64
                / (file_pos as f64 / self.start.elapsed().as_secs_f64()).max(1.0);
            eprintln!("ingest: {} docs, {rate:.1} docs/s, {mb:.2} MB/s of text, {:.0}% of input, ETA {eta:.0}s", self.docs, 100.0 * file_pos as f64 / self.total_bytes.max(1) as f64);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Runs the ingest.
pub fn run(args: Args, quiet: bool) -> Result<()> {
    let say = |m: String| {
        if !quiet {
            eprintln!("ingest: {m}");
        }
    };
    let wanted: Vec<String> = args.sets.iter().map(|s| corpus::set_name(s)).collect();
    let mut encoder = Encoder::load_with(&args.encoder, args.device, args.precision)?;
    let record = encoder.record();
    say(format!(
        "encoder {} on {}, {}, ONNX Runtime {}",
        record.dir, record.provider, record.precision, record.ort_version
    ));
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
    let store = rt.block_on(Store::open_or_create(&args.store, encoder.dim()))?;
    if let Some(old) = rt.block_on(store.encoder_record())? {
        if (&old.provider, &old.precision) != (&record.provider, &record.precision) {
            eprintln!(
                "ingest: warning: the store's earlier embeddings came from {} in {}, these from {} in {}",
                old.provider, old.precision, record.provider, record.precision
            );
        }
    }
    let mut sources = Vec::new();
    let mut total_bytes = 0;
    for f in &args.files {
        let abs = std::fs::canonicalize(f).map_err(|e| Error::io(f, e))?;
        total_bytes += std::fs::metadata(&abs).map_err(|e| Error::io(f, e))?.len();
        sources.push(abs);
    }
    let source_names: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    let mut have = rt.block_on(store.count_from(&source_names))?;
    let mut progress = Progress::new(total_bytes, quiet);
    let mut done_bytes = 0u64;
    let mut bad: Vec<String> = Vec::new();
    let mut added = 0usize;
    'files: for (path, source) in sources.iter().zip(&source_names) {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(other) =
            rt.block_on(store.other_source_with_prefix(&format!("{file_name}:"), source))?
        {
            return Err(Error::bad_file(path, format!("ids are `{file_name}:LINE` and another file of that name is already in the store: {other}")));
        }
        let resume = rt.block_on(store.max_line(source))?.unwrap_or(0);
        if resume > 0 {
            say(format!("{}: resuming after line {resume}", path.display()));
        }
        let mut reader = Reader::open(path)?;
        let mut pending: Vec<corpus::Record> = Vec::new();
        let mut pending_bytes = 0usize;
        let mut flush = |pending: &mut Vec<corpus::Record>,
                         pending_bytes: &mut usize,
                         pos: u64|
         -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let texts: Vec<&str> = pending.iter().map(|r| r.text.as_str()).collect();
            let embeddings = encoder.embed(&texts, args.batch_size)?;
            let docs: Vec<Document> = pending
                .drain(..)
                .zip(embeddings)
                .map(|(r, embedding)| Document {
                    id: format!("{file_name}:{}", r.line),
                    split: args.split.clone(),
                    set_name: r
                        .set_name
                        .or_else(|| args.set_name.clone())
                        .unwrap_or_default(),
                    source: source.clone(),
                    line: r.line,
                    text: r.text,
                    embedding,
                })
                .collect();
            let bytes: u64 = docs.iter().map(|d| d.text.len() as u64).sum();
            rt.block_on(store.add(&docs))?;
            progress.update(done_bytes + pos, docs.len() as u64, bytes);
            added += docs.len();
            *pending_bytes = 0;
            Ok(())
        };
        loop {
            if args.limit.is_some_and(|l| have + pending.len() >= l) {
                flush(&mut pending, &mut pending_bytes, reader.position())?;
                break 'files;
            }
            let Some(item) = reader.next() else { break };
            let rec = match item {
                Ok(r) => r,
                Err(e @ Error::BadInput { .. }) if args.skip_bad => {
                    bad.push(e.to_string());
                    continue;
                }
                Err(e) => {
                    // Keep everything before the bad line: a re-run resumes right there.
                    flush(&mut pending, &mut pending_bytes, reader.position())?;
                    return Err(e);
                }
            };
            if rec.line <= resume {
                continue;
            }
            let set = rec
                .set_name
                .clone()
                .or_else(|| args.set_name.clone())
                .unwrap_or_default();
            if !wanted.is_empty() && !wanted.iter().any(|w| w.eq_ignore_ascii_case(&set)) {
                continue;
            }
            pending_bytes += rec.text.len();
            pending.push(rec);
            if pending.len() >= args.commit_rows || pending_bytes >= COMMIT_BYTES {
                have += pending.len();
                flush(&mut pending, &mut pending_bytes, reader.position())?;
            }
        }
        have += pending.len();
        flush(&mut pending, &mut pending_bytes, reader.position())?;
        done_bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    progress.finish();
    if added > 0 {
        rt.block_on(store.record_encoder(&record))?;
        say("compacting the store's small files".into());
        rt.block_on(store.compact())?;
    }
    let total = rt.block_on(store.count())?;
    say(format!(
        "added {added} documents ({:.1} docs/s with {}); the store holds {total}",
        added as f64 / progress.start.elapsed().as_secs_f64().max(1e-9),
        encoder.provider()
    ));
    if !bad.is_empty() {
        eprintln!("ingest: skipped {} bad lines:", bad.len());
        for b in bad.iter().take(20) {
            eprintln!("  {b}");
        }
        if bad.len() > 20 {
            eprintln!("  ... and {} more", bad.len() - 20);
        }
    }
    println!(
        "{}",
        serde_json::json!({"added": added, "documents": total, "skipped_bad": bad.len(), "store": args.store.display().to_string(), "encoder": record})
    );
    Ok(())
}
