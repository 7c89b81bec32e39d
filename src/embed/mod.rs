//! Document embeddings with a RoBERTa-style encoder run by ONNX Runtime, exactly as the original
//! (docs/spec.md §1.1): truncate to the encoder's max length including `<s>`/`</s>`, masked mean of the last
//! hidden state over all non-pad positions, fp32, no L2 normalisation, NaN → 0, empty text → `" "`.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::Device;

mod batching;
mod runtime;
mod tokenize;

pub use batching::{BatchStats, Batching};
use runtime::with_cuda;
pub use runtime::{cuda_provider_check, init_ort, ort_version, ORT_VERSION};
pub use tokenize::TextTokenizer;

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

/// Whether the encoder's graph computes on padding.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Packing {
    /// `model.onnx`: batches padded to their longest text, as the original.
    #[default]
    Padded,
    /// `model.packed.onnx` (scripts/export_encoder.py --packed): ONNX Runtime's RemovePadding /
    /// PackedAttention / RestorePadding, no compute on padding; CUDA only (the ops have no CPU
    /// kernels in ONNX Runtime 1.31).
    Packed,
}

impl Packing {
    /// The graph file of an encoder directory for `precision` packed this way.
    pub fn graph_file(self, precision: Precision) -> &'static str {
        match (precision, self) {
            (Precision::Fp16, Packing::Padded) => "model.fp16.onnx",
            (Precision::Fp16, Packing::Packed) => "model.fp16.packed.onnx",
            (_, Packing::Padded) => "model.onnx",
            (_, Packing::Packed) => "model.packed.onnx",
        }
    }
}

/// How an encoder directory is loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncoderOptions {
    /// Numeric precision (fp16 reads `model.fp16.onnx`).
    pub precision: Precision,
    /// Padded or packed graph.
    pub packing: Packing,
    /// Whether ONNX Runtime's idle threads spin (its default) instead of blocking; `None`: spin on
    /// the CPU, block on CUDA, where the CPU threads only feed the GPU and the cores are better
    /// left to the ingest's tokenizer (what each costs on the CPU: docs/benchmarks.md, "Ingest
    /// end to end").
    pub spin: Option<bool>,
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
    tokenizer: Arc<TextTokenizer>,
    config: EncoderConfig,
    pad_id: u32,
    needs_token_type_ids: bool,
    /// The graph pools itself (`scripts/export_encoder.py --pool`): its output is `[batch, dim]`.
    pooled_in_graph: bool,
    provider: &'static str,
    precision: Precision,
    graph: &'static str,
    dir: PathBuf,
}

impl Encoder {
    /// Loads `model.onnx`, `tokenizer.json` and `config.json` from an encoder directory, in fp32.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        Self::load_with(dir, device, EncoderOptions::default())
    }

    /// Loads an encoder directory in `options.precision` (fp16 reads `model.fp16.onnx`), packed or
    /// not ([`Packing::graph_file`]).
    pub fn load_with(dir: &Path, device: Device, options: EncoderOptions) -> Result<Self> {
        let EncoderOptions {
            precision,
            packing,
            spin,
        } = options;
        let (_, env) = init_ort()?;
        let config = EncoderConfig::load(dir)?;
        let tokenizer = Arc::new(TextTokenizer::load(dir, config.max_length())?);
        let pad_id = config.pad_token_id.unwrap_or(1);

        if device == Device::Cpu && precision != Precision::Fp32 {
            return Err(Error::setting(
                "precision",
                format!(
                    "encoder precision {} runs on CUDA only (--device cuda)",
                    precision.name()
                ),
            ));
        }
        if device == Device::Cpu && packing == Packing::Packed {
            return Err(Error::setting(
                "packing",
                "the packed encoder graph runs on CUDA only (--device cuda): ONNX Runtime has no \
                 CPU kernels for RemovePadding and PackedAttention; on the CPU, batches sorted by \
                 length keep the padding small (--batch-tokens)",
            ));
        }
        let graph = packing.graph_file(precision);
        let model_path = dir.join(graph);
        if !model_path.is_file() {
            let how = match (precision, packing) {
                (Precision::Fp16, Packing::Packed) => {
                    " (make it with scripts/export_encoder.py --fp16 --packed)"
                }
                (Precision::Fp16, _) => " (make it with scripts/export_encoder.py --fp16)",
                (_, Packing::Packed) => " (make it with scripts/export_encoder.py --packed)",
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
            .map_err(|e| Error::onnx("optimization level", e.into()))?
            .with_intra_op_spinning(spin.unwrap_or(device == Device::Cpu))
            .map_err(|e| Error::onnx("intra-op spinning", e.into()))?;
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
            graph,
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
            graph: self.graph.to_string(),
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

    /// The tokenizer, shareable with a thread that tokenizes while this encoder embeds.
    pub fn tokenizer(&self) -> Arc<TextTokenizer> {
        Arc::clone(&self.tokenizer)
    }

    /// Token ids of `text` as the encoder sees them (truncated, with special tokens).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.token_ids(text)
    }

    /// Token ids of many texts, tokenized in parallel ([`TextTokenizer::token_ids_batch`]).
    pub fn token_ids_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        self.tokenizer.token_ids_batch(texts)
    }

    /// Embeds texts in batches made by `batching`; output keeps input order.
    pub fn embed(&mut self, texts: &[&str], batching: Batching) -> Result<Vec<Vec<f32>>> {
        let ids = self.token_ids_batch(texts)?;
        Ok(self.embed_token_ids(&ids, batching)?.embeddings)
    }

    /// Embeds tokenized texts in batches made by `batching`; output keeps input order.
    pub fn embed_token_ids(&mut self, ids: &[Vec<u32>], batching: Batching) -> Result<Embedded> {
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        let mut embeddings = vec![Vec::new(); ids.len()];
        let mut stats = BatchStats::default();
        for batch in batching.plan(&lengths) {
            stats.add(BatchStats::of_batch(batch.iter().map(|&i| lengths[i])));
            let pooled = self.embed_ids(batch.iter().map(|&i| ids[i].as_slice()))?;
            for (&i, v) in batch.iter().zip(pooled) {
                embeddings[i] = v;
            }
        }
        Ok(Embedded { embeddings, stats })
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

/// Embeddings of one encoder call, in input order, and what their batches computed.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// One embedding per input sequence.
    pub embeddings: Vec<Vec<f32>>,
    /// Sequences, batches, tokens and padded positions.
    pub stats: BatchStats,
}

/// Output of a graph that pools inside (the masked mean, `[batch, dim]`): on a GPU this saves
/// copying `[batch, seq, dim]` hidden states to the host and pooling them there.
const POOLED_OUTPUT: &str = "embedding";

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
