//! `tttnn ingest`: stream corpus files (JSONL(.zst), Parquet, directories of them) into the LanceDB
//! corpus store with encoder embeddings (`tttnn::ingest`), showing progress and printing a JSON
//! summary.
use std::path::PathBuf;
use std::time::Instant;

use tttnn::embed::{self, Encoder};
use tttnn::ingest::{Ingest, IngestEvent, TokenizerThread};
use tttnn::store::Store;
use tttnn::{Device, Error, Result};

use super::ui::Printer;

/// Ingest corpus files (JSONL, .jsonl.zst, Parquet, or directories of them) into the corpus store.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Corpus files or directories: JSONL (`{"text": ..., "meta": {"pile_set_name": ...}}` per
    /// line, as the Pile), .jsonl.zst, Parquet (a Hugging Face dataset's shards; a dataset
    /// directory gives the files of --split).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The LanceDB store directory (created if absent).
    #[arg(long, env = "TTTNN_STORE")]
    pub store: PathBuf,
    /// Encoder directory: model.onnx, tokenizer.json, config.json.
    #[arg(long, env = "TTTNN_ENCODER")]
    pub encoder: PathBuf,
    /// Where the encoder runs.
    #[arg(long, value_enum, default_value_t = Device::Cpu, env = "TTTNN_ENCODER_DEVICE")]
    pub device: Device,
    /// Encoder precision: fp32 (the original's), or the departures tf32 and fp16 (CUDA only).
    #[arg(long, value_enum, default_value_t = embed::Precision::Fp32, env = "TTTNN_ENCODER_PRECISION")]
    pub precision: embed::Precision,
    /// The encoder's graph: padded (`model.onnx`, as the original) or packed (no compute on
    /// padding; `scripts/export_encoder.py --packed`; CUDA only).
    #[arg(long, value_enum, default_value_t = embed::Packing::Padded, env = "TTTNN_ENCODER_PACKING")]
    pub packing: embed::Packing,
    #[command(flatten)]
    pub ingest: Ingest,
}

/// Runs the ingest.
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let say = |m: String| p.say(format!("ingest: {m}"));
    args.ingest.check()?;
    let options = embed::EncoderOptions {
        precision: args.precision,
        packing: args.packing,
        // A tokenizer thread beside a CPU encoder needs cores the spinning threads would hold.
        spin: (args.ingest.tokenizer_thread == TokenizerThread::On).then_some(false),
    };
    let mut encoder = Encoder::load_with(&args.encoder, args.device, options)?;
    let record = encoder.record();
    say(format!(
        "encoder {} ({}) on {}, {}, ONNX Runtime {}",
        record.dir, record.graph, record.provider, record.precision, record.ort_version
    ));
    // With --shard, worker 0 creates the store and the others wait for it.
    let store = Store::open_or_create_as(&args.store, encoder.dim(), args.ingest.shard.index == 0)?;
    if let Some(old) = store.encoder_record()? {
        if (&old.provider, &old.precision) != (&record.provider, &record.precision) {
            p.warn(format!(
                "ingest: the store's earlier embeddings came from {} in {}, these from {} in {}",
                old.provider, old.precision, record.provider, record.precision
            ));
        }
    }
    let ingest = &args.ingest;
    let mut last_log = Instant::now();
    let (mut docs, mut bytes) = (0u64, 0u64);
    let mut bar = None;
    let summary = ingest.run(&store, &mut encoder, &args.files, &mut |e| match e {
        IngestEvent::Chose { note } => say(note.to_string()),
        IngestEvent::Started { input_bytes } => {
            bar = p.bar(
                input_bytes,
                "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            );
        }
        IngestEvent::Resuming { path, line } => {
            say(format!("{}: resuming after line {line}", path.display()))
        }
        IngestEvent::Committed {
            docs: n,
            bytes: b,
            input_pos,
            input_bytes,
            stages,
            seconds,
        } => {
            docs += n as u64;
            bytes += b;
            let secs = seconds.max(1e-9);
            let rate = docs as f64 / secs;
            // Each stage's working share of the wall time: the one near 100% sets the pace.
            let slowest = stages.slowest();
            let busy = format!(
                "busy: read {:.0}% tokenize {:.0}% embed {:.0}% write {:.0}% ({slowest}-bound)",
                100.0 * stages.read / secs,
                100.0 * stages.tokenize / secs,
                100.0 * stages.embed / secs,
                100.0 * stages.write / secs
            );
            if let Some(b) = &bar {
                b.set_position(input_pos);
                b.set_message(format!("{docs} docs, {rate:.1} docs/s, {busy}"));
            } else if last_log.elapsed().as_secs() >= 10 {
                last_log = Instant::now();
                let mb = bytes as f64 / 1e6 / secs;
                let eta = input_bytes.saturating_sub(input_pos) as f64
                    / (input_pos as f64 / secs).max(1.0);
                say(format!("{docs} docs, {rate:.1} docs/s, {mb:.2} MB/s of text, {:.0}% of input, ETA {eta:.0}s; {busy}", 100.0 * input_pos as f64 / input_bytes.max(1) as f64));
            }
        }
        IngestEvent::Compacting => say("compacting the store's small files".into()),
    })?;
    p.finish_bar();
    let st = &summary.stage_seconds;
    say(format!(
        "added {} documents ({:.1} docs/s with {}); the store holds {}; stages worked read {:.1} s, \
         tokenize {:.1} s, embed {:.1} s, write {:.1} s of {:.1} s; {:.1}% of the encoder's positions were padding",
        summary.added,
        summary.docs_per_s,
        encoder.provider(),
        summary.documents,
        st.read,
        st.tokenize,
        st.embed,
        st.write,
        summary.seconds,
        100.0 * summary.padding_fraction
    ));
    if !summary.bad_lines.is_empty() {
        p.warn(format!(
            "ingest: skipped {} bad lines:",
            summary.bad_lines.len()
        ));
        for b in summary.bad_lines.iter().take(20) {
            eprintln!("  {b}");
        }
        if summary.bad_lines.len() > 20 {
            eprintln!("  ... and {} more", summary.bad_lines.len() - 20);
        }
    }
    p.out(serde_json::to_string(&summary).map_err(|e| Error::json("ingest summary", e))?)
}
