//! Document embeddings with a RoBERTa-style encoder run by ONNX Runtime, exactly as the original
//! (docs/spec.md §1.1): truncate to the encoder's max length including `<s>`/`</s>`, masked mean of the last
//! hidden state over all non-pad positions, fp32, no L2 normalisation, NaN → 0, empty text → `" "`.
use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::Device;

mod runtime;

use runtime::with_cuda;
pub use runtime::{cuda_provider_check, init_ort, ort_version, ORT_VERSION};

/// Numeric precision of the encoder.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 as the original; on CUDA with TF32 matmuls off (ONNX Runtime's CUDA provider turns
    /// them on by default).
    #[default]
    Fp32,
    /// fp32 with TF32 matmuls on CUDA: a departure (10-bit mantissa products).
    Tf32,
    /// `model.fp16.onnx` (scripts/export_encoder.py --fp16), CUDA only: a departure.
    Fp16,
}

impl Precision {
    /// The name recorded with a store's embeddings.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "fp32+tf32",
            Precision::Fp16 => "fp16",
        }
    }
}

/// The fields of an HF `config.json` the encoder needs.
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    /// `roberta`, `bert`, ...
    #[serde(default)]
    pub model_type: String,
    /// Embedding dimension.
    pub hidden_size: usize,
    /// Position table size; RoBERTa reserves `pad_token_id + 1` of them.
    pub max_position_embeddings: usize,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

impl EncoderConfig {
    /// Reads an encoder directory's `config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::bad_file(&path, e.to_string()))
    }

    /// Longest input in tokens, special tokens included: 512 for RoBERTa's 514 positions.
    pub fn max_length(&self) -> usize {
        match self.model_type.as_str() {
            // RoBERTa's position ids start at pad_token_id + 1.
            "roberta" | "xlm-roberta" | "camembert" => {
                self.max_position_embeddings - (self.pad_token_id.unwrap_or(1) as usize + 1)
            }
            _ => self.max_position_embeddings,
        }
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A sentence encoder: tokenizer + ONNX graph + the original's pooling.
pub struct Encoder {
    session: Session,
    tokenizer: Tokenizer,
    config: EncoderConfig,
    pad_id: u32,
    needs_token_type_ids: bool,
    /// The graph pools itself (`scripts/export_encoder.py --pool`): its output is `[batch, dim]`.
    pooled_in_graph: bool,
    provider: &'static str,
    precision: Precision,
    dir: PathBuf,
}

impl Encoder {
    /// Loads `model.onnx`, `tokenizer.json` and `config.json` from an encoder directory, in fp32.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        Self::load_with(dir, device, Precision::Fp32)
    }

    /// Loads an encoder directory in `precision` (fp16 reads `model.fp16.onnx`).
    pub fn load_with(dir: &Path, device: Device, precision: Precision) -> Result<Self> {
        let (_, env) = init_ort()?;
        let config = EncoderConfig::load(dir)?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| Error::tokenizer(tok_path.clone(), e))?;
        let pad_id = config.pad_token_id.unwrap_or(1);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_length(),
                ..Default::default()
            }))
            .map_err(|e| Error::tokenizer(tok_path.clone(), e))?;
        // No padding in the tokenizer: batches are padded after sorting by length (embed_ids).
        tokenizer.with_padding(None);

        if device == Device::Cpu && precision != Precision::Fp32 {
            return Err(Error::setting(
                "precision",
                format!(
                    "encoder precision {} runs on CUDA only (--device cuda)",
                    precision.name()
                ),
            ));
        }
        let model_path = dir.join(match precision {
            Precision::Fp16 => "model.fp16.onnx",
            _ => "model.onnx",
        });
        if !model_path.is_file() {
            let how = match precision {
                Precision::Fp16 => " (make it with scripts/export_encoder.py --fp16)",
                _ => "",
            };
            return Err(Error::bad_file(
                &model_path,
                format!("encoder directory has no {}{how}", file_name(&model_path)),
            ));
        }
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut builder = Session::builder(env)
            .map_err(|e| Error::onnx("session builder", e))?
            .with_intra_threads(threads)
            .map_err(|e| Error::onnx("intra threads", e.into()))?
            // ORT_ENABLE_ALL: attention, LayerNorm and GELU fusions for BERT/RoBERTa graphs.
            .with_optimization_level(ort::session::builder::GraphOptimizationLevel::All)
            .map_err(|e| Error::onnx("optimization level", e.into()))?;
        let provider = match device {
            Device::Cpu => "CPUExecutionProvider",
            Device::Cuda => {
                builder = with_cuda(builder, precision == Precision::Tf32, "ONNX Runtime")
                    .map_err(|e| {
                        Error::library(
                            "ONNX Runtime",
                            format!("--device cuda: the CUDA execution provider could not be registered: {e}"),
                        )
                    })?;
                "CUDAExecutionProvider"
            }
        };
        let session = builder
            .commit_from_file(&model_path)
            .map_err(|e| Error::onnx(model_path.display().to_string(), e))?;
        let needs_token_type_ids = session
            .inputs()
            .iter()
            .any(|i| i.name() == "token_type_ids");
        let pooled_in_graph = session.outputs().iter().any(|o| o.name() == POOLED_OUTPUT);
        Ok(Self {
            session,
            tokenizer,
            config,
            pad_id,
            needs_token_type_ids,
            pooled_in_graph,
            provider,
            precision,
            dir: dir.to_path_buf(),
        })
    }

    /// What computes this encoder's embeddings, as a store records it.
    pub fn record(&self) -> crate::store::EncoderRecord {
        crate::store::EncoderRecord {
            dir: self.dir.display().to_string(),
            provider: self.provider.to_string(),
            precision: self.precision.name().to_string(),
            ort_version: ort_version(),
        }
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// Longest input in tokens, special tokens included.
    pub fn max_length(&self) -> usize {
        self.config.max_length()
    }

    /// The execution provider that runs this encoder.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Token ids of `text` as the encoder sees them (truncated, with special tokens).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.token_ids_batch(&[text])?.remove(0))
    }

    /// Token ids of many texts, tokenized in parallel, `TOKENIZE_CHUNK` texts at a time.
    ///
    /// Only the first `max_length` tokens count, so a long text is tokenized from a prefix cut
    /// just before a whitespace character (pre-tokenizers split there, so the tokens before the cut
    /// are those of the full text). Prefixes grow from `PREFIX_WINDOWS`·`max_length` bytes until
    /// one fills `max_length`; failing that, the full text is used.
    pub fn token_ids_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(TOKENIZE_CHUNK) {
            out.extend(self.token_ids_chunk(chunk)?);
        }
        Ok(out)
    }

    fn token_ids_chunk(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let texts: Vec<&str> = texts
            .iter()
            .map(|t| if t.is_empty() { " " } else { t })
            .collect();
        let mut out: Vec<Option<Vec<u32>>> = vec![None; texts.len()];
        let mut todo: Vec<usize> = (0..texts.len()).collect();
        let windows = PREFIX_WINDOWS
            .iter()
            .map(|w| w * self.max_length())
            .chain([usize::MAX]);
        for window in windows {
            if todo.is_empty() {
                break;
            }
            let inputs: Vec<&str> = todo
                .iter()
                .map(|&i| prefix_at_whitespace(texts[i], window))
                .collect();
            let encs = self
                .tokenizer
                .encode_batch(inputs.clone(), true)
                .map_err(|e| self.tok_err(e))?;
            let mut short = Vec::new();
            for ((&i, enc), input) in todo.iter().zip(encs).zip(&inputs) {
                // A cut prefix stands for the whole text only when it overflows max_length.
                if input.len() < texts[i].len() && enc.get_overflowing().is_empty() {
                    short.push(i);
                } else {
                    out[i] = Some(enc.get_ids().to_vec());
                }
            }
            todo = short;
        }
        Ok(out
            .into_iter()
            .map(|ids| ids.expect("the last window is the whole text"))
            .collect())
    }

    fn tok_err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            path: self.dir.join("tokenizer.json"),
            message: e.to_string(),
        }
    }

    /// Embeds texts in batches of `batch_size`, grouping similar lengths; output keeps input order.
    pub fn embed(&mut self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let ids = self.token_ids_batch(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| ids[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for batch in order.chunks(batch_size.max(1)) {
            let pooled = self.embed_ids(batch.iter().map(|&i| ids[i].as_slice()))?;
            for (&i, v) in batch.iter().zip(pooled) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// Runs the encoder on one padded batch of token ids and pools each row.
    fn embed_ids<'a>(
        &mut self,
        batch: impl Iterator<Item = &'a [u32]> + Clone,
    ) -> Result<Vec<Vec<f32>>> {
        let rows = batch.clone().count();
        let width = batch.clone().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut input_ids = vec![self.pad_id as i64; rows * width];
        let mut mask = vec![0i64; rows * width];
        for (r, ids) in batch.enumerate() {
            for (c, &id) in ids.iter().enumerate() {
                input_ids[r * width + c] = id as i64;
                mask[r * width + c] = 1;
            }
        }
        let shape = [rows as i64, width as i64];
        let ids_t =
            Tensor::from_array((shape, input_ids)).map_err(|e| Error::onnx("input_ids", e))?;
        let mask_t = Tensor::from_array((shape, mask.clone()))
            .map_err(|e| Error::onnx("attention_mask", e))?;
        let outputs = if self.needs_token_type_ids {
            let tt = Tensor::from_array((shape, vec![0i64; rows * width])).map_err(|e| Error::onnx("token_type_ids", e))?;
            self.session.run(ort::inputs!["input_ids" => ids_t, "attention_mask" => mask_t, "token_type_ids" => tt])
        } else {
            self.session.run(ort::inputs!["input_ids" => ids_t, "attention_mask" => mask_t])
        }
        .map_err(|e| Error::onnx("encoder forward", e))?;
        let output = if self.pooled_in_graph {
            POOLED_OUTPUT
        } else {
            "last_hidden_state"
        };
        let (out_shape, hidden) = outputs[output]
            .try_extract_tensor::<f32>()
            .map_err(|e| Error::onnx(output, e))?;
        let dim = *out_shape.last().unwrap_or(&0) as usize;
        if dim != self.config.hidden_size {
            return Err(Error::bad_file(
                &self.dir,
                format!(
                    "encoder output has dimension {dim}, config.json says hidden_size {}",
                    self.config.hidden_size
                ),
            ));
        }
        if self.pooled_in_graph {
            // The masked mean came out of the graph.
            return Ok(hidden
                .chunks(dim)
                .map(|v| v.iter().copied().map(nan_to_zero).collect())
                .collect());
        }
        Ok((0..rows)
            .map(|r| {
                masked_mean(
                    &hidden[r * width * dim..(r + 1) * width * dim],
                    &mask[r * width..(r + 1) * width],
                    dim,
                )
            })
            .collect())
    }
}

/// Output of a graph that pools inside (the masked mean, `[batch, dim]`): on a GPU this saves
/// copying `[batch, seq, dim]` hidden states to the host and pooling them there.
const POOLED_OUTPUT: &str = "embedding";

/// Texts per tokenizer call: the tokenizer keeps offsets, token strings and overflow windows for
/// every token of its input, so one call over a whole commit of long documents could take gigabytes.
const TOKENIZE_CHUNK: usize = 256;

/// Prefix lengths tried, in bytes per token of `max_length`: 512 tokens of prose or code fit in
/// 4 KiB; only texts of very long tokens need the larger cut or the whole text.
const PREFIX_WINDOWS: [usize; 2] = [8, 64];

/// `text` cut before the last whitespace character at or before byte `max` (whole when shorter,
/// or when no whitespace precedes `max`).
fn prefix_at_whitespace(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text[..end].rfind(char::is_whitespace) {
        Some(i) if i > 0 => &text[..i],
        _ => text,
    }
}

/// Mean of the rows of `hidden` (`[seq, dim]`) where `mask` is 1, NaN as 0 (`nan_to_zero`).
pub(crate) fn masked_mean(hidden: &[f32], mask: &[i64], dim: usize) -> Vec<f32> {
    let mut sum = vec![0f32; dim];
    let mut n = 0f32;
    for (pos, &m) in mask.iter().enumerate() {
        if m != 0 {
            n += 1.0;
            for (s, h) in sum.iter_mut().zip(&hidden[pos * dim..(pos + 1) * dim]) {
                *s += h;
            }
        }
    }
    sum.iter().map(|s| nan_to_zero(s / n)).collect()
}

/// NaN becomes 0, as the original's index build does with its embeddings.
fn nan_to_zero(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_mean_skips_padding_and_zeroes_nan() {
        let hidden = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        assert_eq!(masked_mean(&hidden, &[1, 1, 0], 2), vec![2.0, 3.0]);
        assert_eq!(masked_mean(&[f32::NAN, 1.0], &[1], 2), vec![0.0, 1.0]);
    }

    #[test]
    fn prefixes_end_before_whitespace() {
        assert_eq!(prefix_at_whitespace("short", 10), "short");
        assert_eq!(prefix_at_whitespace("alpha beta gamma", 12), "alpha beta");
        assert_eq!(
            prefix_at_whitespace("nowhitespaceatall", 5),
            "nowhitespaceatall"
        );
        assert_eq!(prefix_at_whitespace("é é é é", 4), "é");
    }

    #[test]
    fn roberta_reserves_pad_positions() {
        let cfg = EncoderConfig {
            model_type: "roberta".into(),
            hidden_size: 1024,
            max_position_embeddings: 514,
            pad_token_id: Some(1),
        };
        assert_eq!(cfg.max_length(), 512);
        let bert = EncoderConfig {
            model_type: "bert".into(),
            hidden_size: 384,
            max_position_embeddings: 512,
            pad_token_id: Some(0),
        };
        assert_eq!(bert.max_length(), 512);
    }
}
