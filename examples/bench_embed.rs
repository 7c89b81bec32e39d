//! Embedding throughput of tttnn's encoder path (tokenizers + ONNX Runtime, length-bucketed
//! batches, the original's pooling) on the texts of a JSONL file; `scripts/bench-embed` runs it
//! beside the Python reference (scripts/bench_embed_reference.py) on the same texts.
//!
//! `scripts/device-check` runs it on the GPU machine (docs/gpu.md).
//!
//!     cargo run --example bench_embed -- ENCODER_DIR FILE.jsonl [--batch-size 32] [--docs 2000]
//!         [--device cpu|cuda] [--precision fp32|tf32|fp16] [--save EMBEDDINGS.json]
use std::path::PathBuf;
use std::time::Instant;

use tttnn::corpus::Reader;
use tttnn::embed::{Batching, Encoder, EncoderOptions, Packing, Precision};
use tttnn::Device;

/// Embedding throughput on the texts of a JSONL file.
#[derive(clap::Parser)]
struct Args {
    /// Encoder directory (model.onnx, tokenizer.json, config.json).
    encoder: PathBuf,
    /// Pile-format JSONL file.
    file: PathBuf,
    /// Most texts per encoder call.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Most positions per encoder call, padding included (as `tttnn ingest --batch-tokens`).
    #[arg(long, default_value_t = usize::MAX)]
    batch_tokens: usize,
    /// At most this many documents.
    #[arg(long, default_value_t = 2000)]
    docs: usize,
    /// Where the encoder runs.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    /// Encoder precision (tf32 and fp16 on CUDA only).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    precision: Precision,
    /// The encoder's graph: padded or packed (CUDA only).
    #[arg(long, value_enum, default_value_t = Packing::Padded)]
    packing: Packing,
    /// Write the embeddings here as a JSON array of arrays (compares devices and precisions).
    #[arg(long)]
    save: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let Args {
        encoder: dir,
        file,
        batch_size: batch,
        batch_tokens,
        docs,
        device,
        precision,
        packing,
        save,
    } = clap::Parser::parse();
    let texts: Vec<String> = Reader::open(&file)?
        .take(docs)
        .map(|r| r.map(|r| r.text))
        .collect::<Result<_, _>>()?;
    let mut enc = Encoder::load_with(
        &dir,
        device,
        EncoderOptions {
            precision,
            packing,
            spin: None,
        },
    )?;
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let batching = Batching {
        max_rows: batch,
        max_tokens: batch_tokens,
    };
    enc.embed(&refs[..batch.min(refs.len())], batching)?;
    let t = Instant::now();
    let ids = enc.token_ids_batch(&refs)?;
    let tokenize_s = t.elapsed().as_secs_f64();
    let embedded = enc.embed_token_ids(&ids, batching)?;
    let s = t.elapsed().as_secs_f64();
    let out = embedded.embeddings;
    if let Some(path) = &save {
        std::fs::write(path, serde_json::to_vec(&out)?)?;
    }
    let bytes: usize = texts.iter().map(|t| t.len()).sum();
    println!(
        "{}",
        serde_json::json!({"impl": "tttnn", "encoder": dir.display().to_string(), "docs": out.len(), "batch_size": batch,
            "max_length": enc.max_length(), "provider": enc.provider(), "precision": precision.name(), "packed": packing == Packing::Packed, "seconds": s, "tokenize_seconds": tokenize_s,
            "padding_fraction": embedded.stats.padding_fraction(), "batches": embedded.stats.batches, "docs_per_s": out.len() as f64 / s, "mb_per_s": bytes as f64 / 1e6 / s})
    );
    Ok(())
}
