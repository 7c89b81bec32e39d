//! `tttnn eval`: bits per byte of documents under an LM, exactly as lm-evaluation-harness
//! computes it for the original (rolling disjoint windows, micro-average over documents).
use std::path::{Path, PathBuf};

use serde::Serialize;

use tttnn::corpus;
use tttnn::eval::{self, Aggregate};
use tttnn::lm::{LanguageModel, Precision};
use tttnn::{Device, Error, Result};

use super::ui::Printer;

/// Bits per byte, byte and word perplexity of text files under an LM.
///
/// A `.jsonl` or `.jsonl.zst` file holds one document per line (Pile format); any other file is
/// one document.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// HF model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, env = "TTTNN_MODEL")]
    pub model: PathBuf,
    /// Files to evaluate.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Where the LM runs.
    #[arg(long, value_enum, default_value_t = Device::Cpu, env = "TTTNN_DEVICE")]
    pub device: Device,
    /// fp32 (faithful) or bf16 (faster on GPUs; a departure).
    #[arg(long, value_enum, default_value_t = Precision::Fp32, env = "TTTNN_PRECISION")]
    pub precision: Precision,
    /// Evaluate only each document's remainder after the split protocol's prefix.
    #[arg(long)]
    pub split_text: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One row of the output.
#[derive(Debug, Serialize)]
struct Row {
    file: String,
    docs: u64,
    tokens: u64,
    bytes: u64,
    words: u64,
    loglik: f64,
    bits_per_byte: f64,
    byte_perplexity: f64,
    word_perplexity: f64,
}

impl Row {
    fn new(file: String, a: &Aggregate, tokens: u64) -> Self {
        Self {
            file,
            docs: a.docs,
            tokens,
            bytes: a.bytes,
            words: a.words,
            loglik: a.loglik,
            bits_per_byte: a.bits_per_byte(),
            byte_perplexity: a.byte_perplexity(),
            word_perplexity: a.word_perplexity(),
        }
    }
}

fn documents(path: &Path) -> Result<Box<dyn Iterator<Item = Result<String>>>> {
    if corpus::is_jsonl(path) {
        return Ok(Box::new(
            corpus::Reader::open(path)?.map(|r| r.map(|r| r.text)),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::bad_file(
            path,
            format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
        )
    })?;
    Ok(Box::new(std::iter::once(Ok(text))))
}

/// Evaluates every file and prints per-file rows and the total.
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let mut lm = LanguageModel::load(&args.model, args.device)?;
    lm.set_precision(args.precision)?;
    let mut rows = Vec::new();
    let (mut total, mut total_tokens) = (Aggregate::default(), 0);
    for path in &args.files {
        let (mut agg, mut tokens) = (Aggregate::default(), 0);
        for doc in documents(path)? {
            let mut text = doc?;
            if args.split_text {
                text = eval::split_text(&lm, &text)?.1;
            }
            let s = eval::loglikelihood(&lm, &text)?;
            tokens += s.tokens;
            agg.add(&s);
            total.add(&s);
            if agg.docs % 100 == 0 {
                p.say(format!("eval: {}: {} documents", path.display(), agg.docs));
            }
        }
        total_tokens += tokens;
        rows.push(Row::new(path.display().to_string(), &agg, tokens));
    }
    if args.files.len() > 1 {
        rows.push(Row::new("total".into(), &total, total_tokens));
    }
    if args.json {
        p.out(serde_json::to_string_pretty(&rows).map_err(|e| Error::json("eval rows", e))?)?;
    } else {
        p.out(format!(
            "{:<40} {:>6} {:>9} {:>10} {:>14} {:>15} {:>15}",
            "file",
            "docs",
            "tokens",
            "bytes",
            "bits_per_byte",
            "byte_perplexity",
            "word_perplexity"
        ))?;
        for r in &rows {
            p.out(format!(
                "{:<40} {:>6} {:>9} {:>10} {:>14.4} {:>15.4} {:>15.2}",
                r.file,
                r.docs,
                r.tokens,
                r.bytes,
                r.bits_per_byte,
                r.byte_perplexity,
                r.word_perplexity
            ))?;
        }
    }
    Ok(())
}
