//! Embedding throughput of tttnn's encoder path (tokenizers + ONNX Runtime, length-bucketed
//! batches, the original's pooling) on the texts of a JSONL file; `scripts/bench-embed` runs it
//! beside the Python reference (scripts/bench_embed_reference.py) on the same texts.
//!
//!     cargo run --example bench_embed -- ENCODER_DIR FILE.jsonl [--batch-size 32] [--docs 2000]
use std::path::PathBuf;
use std::time::Instant;

use tttnn::corpus::Reader;
use tttnn::embed::{Device, Encoder};

/// Embedding throughput on the texts of a JSONL file.
#[derive(clap::Parser)]
struct Args {
    /// Encoder directory (model.onnx, tokenizer.json, config.json).
    encoder: PathBuf,
    /// Pile-format JSONL file.
    file: PathBuf,
    /// Texts per encoder call.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// At most this many documents.
    #[arg(long, default_value_t = 2000)]
    docs: usize,
}

fn main() -> anyhow::Result<()> {
    let Args {
        encoder: dir,
        file,
        batch_size: batch,
        docs,
    } = clap::Parser::parse();
    let texts: Vec<String> = Reader::open(&file)?
        .take(docs)
        .map(|r| r.map(|r| r.text))
        .collect::<Result<_, _>>()?;
    let mut enc = Encoder::load(&dir, Device::Cpu)?;
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    enc.embed(&refs[..batch.min(refs.len())], batch)?;
    let t = Instant::now();
    let out = enc.embed(&refs, batch)?;
    let s = t.elapsed().as_secs_f64();
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    println!(
        "{}",
        serde_json::json!({"impl": "tttnn", "encoder": dir.display().to_string(), "docs": out.len(), "batch_size": batch,
            "max_length": enc.max_length(), "seconds": s, "docs_per_s": out.len() as f64 / s, "mb_per_s": bytes as f64 / 1e6 / s})
    );
    Ok(())
}
