//! Causal LMs on libtorch via `tch`, loaded from HF model directories by HF parameter names.
pub mod device;
pub mod gpt2;
pub mod gpt_neo;
pub mod layers;
pub mod llama;
pub mod weights;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::nn::VarStore;
use tch::Tensor;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::Device;
pub use layers::Lora;

/// The libtorch version tch 0.24.0 binds; scripts/setup installs this torch wheel.
pub const TORCH_VERSION: &str = "2.11.0";

/// `model_type` values tttnn can run.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["gpt2", "gpt_neo", "llama", "qwen2"];

#[derive(Deserialize)]
struct ModelType {
    model_type: String,
}

/// Numeric precision of the weights and activations.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 everywhere, as the original (TF32 matmuls off).
    #[default]
    Fp32,
    /// fp32 weights and AdamW state with TF32 matmuls on CUDA: a departure (10-bit mantissa products).
    Tf32,
    /// Mixed precision, a departure: bf16 working weights, activations and gradients; training keeps
    /// fp32 master weights and AdamW state (`ttt::FlatWeights`). Evaluation alone runs in bf16.
    Bf16,
}

impl Precision {
    /// Sets libtorch's matmul mode for this precision; TF32 exists on CUDA only.
    pub fn apply(self, device: tch::Device) -> Result<()> {
        if self != Precision::Tf32 {
            return Ok(());
        }
        if device == tch::Device::Cpu {
            return Err(Error::setting(
                "precision",
                "tf32 is a CUDA matmul mode; use fp32 or bf16 on the CPU",
            ));
        }
        // libtorch reads this once, at its first cuBLAS matmul (at::Context::allowTF32CuBLAS);
        // tch 0.24 has no binding for torch.backends.cuda.matmul.allow_tf32.
        std::env::set_var("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "1");
        Ok(())
    }
}

/// How a model's trainable weights are laid out: one set, or one set per lane (`tttnn run
/// --lanes`, `ttt::LaneTrainer`), lane `l` of a batch computed with set `l`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// One set of weights: any batch, the single-document kernels (`addmm`, fused LayerNorm).
    #[default]
    Single,
    /// This many sets: a batch is exactly one sequence per lane, through batched kernels.
    Lanes(usize),
}

/// The seed LoRA adapters are drawn with: every document's adapters start from the same draw.
const LORA_SEED: i64 = 0x10_4A;

/// Freezes every weight but the LoRA adapters, after checking each target adapted some layer.
fn freeze_all_but_adapters(vs: &VarStore, lora: &Lora, config: &Path) -> Result<()> {
    let vars = vs.variables();
    for target in &lora.targets {
        let suffix = format!(".{target}.lora_A.weight");
        if !vars.keys().any(|n| n.ends_with(&suffix)) {
            let mut layers: Vec<&str> = vars
                .iter()
                .filter(|(n, t)| n.ends_with(".weight") && t.dim() == 2 && !weights::is_adapter(n))
                .map(|(n, _)| n)
                .filter_map(|n| n.trim_end_matches(".weight").rsplit('.').next())
                .filter(|n| n.parse::<usize>().is_err())
                .collect();
            layers.sort();
            layers.dedup();
            return Err(Error::setting(
                "lora_targets",
                format!(
                    "`{target}` names no linear layer of {} (its layers: {})",
                    config.display(),
                    layers.join(", ")
                ),
            ));
        }
    }
    for (name, var) in vars {
        if !weights::is_adapter(&name) {
            let _ = var.set_requires_grad(false);
        }
    }
    Ok(())
}

/// The network behind a [`LanguageModel`].
#[derive(Debug)]
enum Network {
    Gpt2(gpt2::Gpt2),
    GptNeo(gpt_neo::GptNeo),
    Llama(llama::Llama),
}

/// A causal LM with its tokenizer and weights.
pub struct LanguageModel {
    vs: VarStore,
    network: Network,
    tokenizer: Tokenizer,
    /// Context length (`n_positions` / `max_position_embeddings`), used for evaluation windows.
    pub n_ctx: usize,
    /// End-of-text token: the prefix of the first evaluation window.
    pub eot_id: i64,
    /// Size of the output vocabulary (the logits' last dimension).
    pub vocab_size: i64,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub hidden: usize,
    /// The largest dropout probability training draws masks with (config.json's).
    pub dropout: f64,
    /// The LoRA adapters it carries, targets resolved (None: every weight trains).
    pub lora: Option<Lora>,
    /// Where it was loaded from.
    pub dir: PathBuf,
    /// One set of weights, or one per lane (set by `ttt::FlatWeights`).
    layout: Layout,
}

impl LanguageModel {
    /// Loads `config.json`, `tokenizer.json` and the safetensors weights of an HF model directory.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        Self::load_with(dir, device, None)
    }

    /// As [`LanguageModel::load`], with LoRA adapters on the layers `lora` targets (the model
    /// type's default targets when it names none): the base weights are frozen, only the
    /// adapters train. The adapters start from a fixed seed, the same every load.
    pub fn load_with(dir: &Path, device: Device, lora: Option<&Lora>) -> Result<Self> {
        let device = device.to_tch()?;
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let bad = |e: serde_json::Error| Error::bad_file(&config_path, e.to_string());
        let ModelType { model_type } = serde_json::from_str(&text).map_err(bad)?;
        let lora = lora.map(|l| Lora {
            targets: if l.targets.is_empty() {
                Lora::default_targets(&model_type)
            } else {
                l.targets.clone()
            },
            ..l.clone()
        });
        if lora.is_some() {
            tch::manual_seed(LORA_SEED);
        }
        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| Error::tokenizer(tok_path.clone(), e))?;
        let vs = VarStore::new(device);
        let (network, n_ctx, eos, vocab_size, dropout, (n_layer, hidden)) =
            match model_type.as_str() {
                "gpt2" => {
                    let mut cfg: gpt2::Config = serde_json::from_str(&text).map_err(bad)?;
                    cfg.lora = lora.clone();
                    (
                        Network::Gpt2(gpt2::Gpt2::new(vs.root(), &cfg)),
                        cfg.n_positions as usize,
                        cfg.eos_token_id,
                        cfg.vocab_size,
                        cfg.resid_pdrop.max(cfg.embd_pdrop).max(cfg.attn_pdrop),
                        (cfg.n_layer, cfg.n_embd),
                    )
                }
                "gpt_neo" => {
                    let mut cfg: gpt_neo::Config = serde_json::from_str(&text).map_err(bad)?;
                    cfg.lora = lora.clone();
                    (
                        Network::GptNeo(gpt_neo::GptNeo::new(vs.root(), &cfg)),
                        cfg.max_position_embeddings as usize,
                        cfg.eos_token_id,
                        cfg.vocab_size,
                        cfg.resid_dropout
                            .max(cfg.embed_dropout)
                            .max(cfg.attention_dropout),
                        (cfg.num_layers, cfg.hidden_size),
                    )
                }
                "llama" | "qwen2" => {
                    let mut cfg: llama::Config = serde_json::from_str(&text).map_err(bad)?;
                    cfg.lora = lora.clone();
                    cfg.validate(&config_path)?;
                    (
                        Network::Llama(llama::Llama::new(vs.root(), &cfg)),
                        cfg.max_position_embeddings as usize,
                        cfg.eos(),
                        cfg.vocab_size,
                        cfg.attention_dropout,
                        (cfg.num_hidden_layers, cfg.hidden_size),
                    )
                }
                other => {
                    return Err(Error::bad_file(
                        &config_path,
                        format!(
                            "model_type `{other}` is not supported (supported: {})",
                            SUPPORTED_MODEL_TYPES.join(", ")
                        ),
                    ))
                }
            };
        weights::load(&vs, dir)?;
        if let Some(lora) = &lora {
            freeze_all_but_adapters(&vs, lora, &config_path)?;
        }
        let eot_id = match eos.or_else(|| tokenizer.token_to_id("<|endoftext|>").map(i64::from)) {
            Some(id) => id,
            None => {
                return Err(Error::bad_file(
                    &config_path,
                    "no `eos_token_id` and no <|endoftext|> token",
                ))
            }
        };
        Ok(Self {
            vs,
            network,
            tokenizer,
            n_ctx,
            eot_id,
            vocab_size,
            n_layer: n_layer as usize,
            hidden: hidden as usize,
            dropout,
            lora,
            dir: dir.to_path_buf(),
            layout: Layout::Single,
        })
    }

    /// Casts the weights to `precision` for evaluation alone; training takes the fp32 weights and
    /// its precision from `TrainConfig` instead (mixed precision keeps fp32 masters).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        precision.apply(self.device())?;
        match precision {
            Precision::Fp32 | Precision::Tf32 => self.vs.float(),
            Precision::Bf16 => self.vs.bfloat16(),
        }
        Ok(())
    }

    /// Logits `[batch, seq, vocab]`; `train` turns dropout on. A model laid out for L lanes
    /// takes a batch of r sequences per lane (`L·r`, lane l's rows consecutive: r chunks per
    /// step, `--neighbors-per-step`): any other is refused, never broadcast.
    pub fn forward(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        if let Layout::Lanes(lanes) = self.layout {
            let batch = ids.size().first().copied().unwrap_or(0);
            if batch == 0 || batch % lanes as i64 != 0 {
                return Err(Error::internal(format!(
                    "{}: a batch of {batch} sequences through weights laid out for {lanes} lanes \
                     (a batch holds the same number of sequences for every lane)",
                    self.dir.display()
                )));
            }
        }
        Ok(match &self.network {
            Network::Gpt2(m) => m.forward(ids, train),
            Network::GptNeo(m) => m.forward(ids, train),
            Network::Llama(m) => m.forward(ids, train),
        })
    }

    /// One set of weights, or one per lane.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Records how `ttt::FlatWeights` laid the weights out (the layers follow the weights' shapes).
    pub(crate) fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
    }

    /// Token ids of `text` without special tokens, as lm-eval's `tok_encode`.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::tokenizer(self.dir.join("tokenizer.json"), e))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Text of token ids.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.tokenizer
            .decode(&ids, false)
            .map_err(|e| Error::tokenizer(self.dir.join("tokenizer.json"), e))
    }

    /// The device the weights live on.
    pub fn device(&self) -> tch::Device {
        self.vs.device()
    }

    /// The variables (weights) by HF name.
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// Number of parameters.
    pub fn num_parameters(&self) -> i64 {
        self.vs
            .trainable_variables()
            .iter()
            .map(|t| t.numel() as i64)
            .sum()
    }
}
