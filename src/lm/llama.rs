//! Llama and Qwen2 (`LlamaForCausalLM`, `Qwen2ForCausalLM`): RMSNorm, rotary position embeddings
//! with the config's theta and scaling, SwiGLU MLP, grouped-query attention, Qwen2's q/k/v biases,
//! LM head tied or untied.
use std::path::Path;

use serde::Deserialize;
use tch::nn;
use tch::{Kind, Tensor};

use super::layers::{lm_head_logits, Embedding, Linear, Lora, RmsNorm};
use crate::error::{Error, Result};

/// `config.json` of a Llama or Qwen2 model.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// `llama` or `qwen2`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// MLP width.
    pub intermediate_size: i64,
    /// Number of blocks.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (grouped-query attention); equal to the query heads when absent.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Per-head dimension; hidden / heads when absent.
    #[serde(default)]
    pub head_dim: Option<i64>,
    /// Context length.
    pub max_position_embeddings: i64,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RoPE scaling (`linear` or `llama3`).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Whether the LM head shares the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Llama: biases on q/k/v/o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama: biases on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Dropout on attention probabilities.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Qwen2's sliding-window attention switch (not supported when on).
    #[serde(default)]
    pub use_sliding_window: bool,
    /// End-of-text token id (a list in some configs).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// LoRA adapters to add (`--adapter lora`); not part of config.json.
    #[serde(skip)]
    pub lora: Option<Lora>,
}

/// `rope_scaling` of config.json.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    /// `rope_type` (or the older `type`).
    #[serde(alias = "type")]
    pub rope_type: String,
    /// Scale factor.
    #[serde(default = "one")]
    pub factor: f64,
    /// llama3: low-frequency factor.
    #[serde(default = "one")]
    pub low_freq_factor: f64,
    /// llama3: high-frequency factor.
    #[serde(default = "four")]
    pub high_freq_factor: f64,
    /// llama3: the pre-extension context length.
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10000.0
}
fn one() -> f64 {
    1.0
}
fn four() -> f64 {
    4.0
}

impl Config {
    fn head_dim(&self) -> i64 {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Checks the settings this implementation does not cover.
    pub fn validate(&self, config_path: &Path) -> Result<()> {
        if self.use_sliding_window {
            return Err(Error::bad_file(
                config_path,
                "use_sliding_window = true is not supported",
            ));
        }
        match self.rope_scaling.as_ref().map(|r| r.rope_type.as_str()) {
            None | Some("default") | Some("linear") | Some("llama3") => Ok(()),
            Some(other) => Err(Error::bad_file(
                config_path,
                format!("rope_scaling type `{other}` is not supported (default, linear, llama3)"),
            )),
        }
    }

    /// The first end-of-text id.
    pub fn eos(&self) -> Option<i64> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_i64(),
            Some(serde_json::Value::Array(a)) => a.first().and_then(|v| v.as_i64()),
            _ => None,
        }
    }

    /// RoPE inverse frequencies after the config's scaling, as HF computes them.
    pub fn inv_freq(&self) -> Vec<f64> {
        let d = self.head_dim();
        let base: Vec<f64> = (0..d)
            .step_by(2)
            .map(|i| 1.0 / self.rope_theta.powf(i as f64 / d as f64))
            .collect();
        let Some(s) = &self.rope_scaling else {
            return base;
        };
        match s.rope_type.as_str() {
            "linear" => base.iter().map(|f| f / s.factor).collect(),
            "llama3" => {
                let old = s.original_max_position_embeddings.unwrap_or(8192.0);
                let (low_wl, high_wl) = (old / s.low_freq_factor, old / s.high_freq_factor);
                base.iter()
                    .map(|&f| {
                        let wl = 2.0 * std::f64::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / s.factor
                        } else {
                            let smooth = (old / wl - s.low_freq_factor)
                                / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    })
                    .collect()
            }
            _ => base,
        }
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1)
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    dropout: f64,
}

impl Attention {
    fn new(vs: nn::Path, cfg: &Config) -> Self {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        // Qwen2 always has q/k/v biases and no o_proj bias; Llama follows `attention_bias`.
        let qkv_bias = cfg.model_type == "qwen2" || cfg.attention_bias;
        let o_bias = cfg.model_type != "qwen2" && cfg.attention_bias;
        let (q, kv) = (cfg.num_attention_heads * hd, cfg.kv_heads() * hd);
        Self {
            q_proj: Linear::new(&vs / "q_proj", h, q, qkv_bias, cfg.lora.as_ref()),
            k_proj: Linear::new(&vs / "k_proj", h, kv, qkv_bias, cfg.lora.as_ref()),
            v_proj: Linear::new(&vs / "v_proj", h, kv, qkv_bias, cfg.lora.as_ref()),
            o_proj: Linear::new(&vs / "o_proj", q, h, o_bias, cfg.lora.as_ref()),
            heads: cfg.num_attention_heads,
            kv_heads: cfg.kv_heads(),
            head_dim: hd,
            dropout: cfg.attention_dropout,
        }
    }

    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor, train: bool) -> Tensor {
        let (b, t, _) = xs.size3().expect("[batch, seq, hidden]");
        let split = |x: Tensor, n: i64| x.view([b, t, n, self.head_dim]).transpose(1, 2);
        let q = split(self.q_proj.forward(xs), self.heads);
        let k = split(self.k_proj.forward(xs), self.kv_heads);
        let v = split(self.v_proj.forward(xs), self.kv_heads);
        let q = &q * cos + rotate_half(&q) * sin;
        let k = &k * cos + rotate_half(&k) * sin;
        let rep = self.heads / self.kv_heads;
        let (k, v) = if rep > 1 {
            (
                k.repeat_interleave_self_int(rep, 1, None),
                v.repeat_interleave_self_int(rep, 1, None),
            )
        } else {
            (k, v)
        };
        let p = if train { self.dropout } else { 0.0 };
        let y =
            Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, p, true, None, false);
        self.o_proj.forward(&y.transpose(1, 2).contiguous().view([
            b,
            t,
            self.heads * self.head_dim,
        ]))
    }
}

#[derive(Debug)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Block {
    fn new(vs: nn::Path, cfg: &Config) -> Self {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let bias = cfg.mlp_bias;
        let mlp = &vs / "mlp";
        Self {
            input_layernorm: RmsNorm::new(&vs / "input_layernorm", h, cfg.rms_norm_eps),
            self_attn: Attention::new(&vs / "self_attn", cfg),
            post_attention_layernorm: RmsNorm::new(
                &vs / "post_attention_layernorm",
                h,
                cfg.rms_norm_eps,
            ),
            gate_proj: Linear::new(&mlp / "gate_proj", h, i, bias, cfg.lora.as_ref()),
            up_proj: Linear::new(&mlp / "up_proj", h, i, bias, cfg.lora.as_ref()),
            down_proj: Linear::new(&mlp / "down_proj", i, h, bias, cfg.lora.as_ref()),
        }
    }

    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor, train: bool) -> Tensor {
        let xs = xs
            + self
                .self_attn
                .forward(&self.input_layernorm.forward(xs), cos, sin, train);
        let h = self.post_attention_layernorm.forward(&xs);
        &xs + self
            .down_proj
            .forward(&(self.gate_proj.forward(&h).silu() * self.up_proj.forward(&h)))
    }
}

/// A Llama or Qwen2 causal LM.
#[derive(Debug)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Tensor>,
    /// RoPE's inverse frequencies `[1, head_dim / 2]` fp32, on the model's device: made once, so a
    /// forward copies nothing from the host (a CUDA graph cannot capture such a copy).
    inv_freq: Tensor,
}

impl Llama {
    /// Creates the variables under `model.*` (and `lm_head` when untied), HF's names.
    pub fn new(vs: nn::Path, cfg: &Config) -> Self {
        let m = &vs / "model";
        Self {
            embed_tokens: Embedding::new(&m / "embed_tokens", cfg.vocab_size, cfg.hidden_size),
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Block::new(&m / "layers" / i, cfg))
                .collect(),
            norm: RmsNorm::new(&m / "norm", cfg.hidden_size, cfg.rms_norm_eps),
            lm_head: (!cfg.tie_word_embeddings).then(|| {
                (&vs / "lm_head").var(
                    "weight",
                    &[cfg.vocab_size, cfg.hidden_size],
                    nn::Init::Const(0.),
                )
            }),
            inv_freq: Tensor::from_slice(
                &cfg.inv_freq()
                    .into_iter()
                    .map(|f| f as f32)
                    .collect::<Vec<_>>(),
            )
            .to(vs.device())
            .unsqueeze(0),
        }
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (under lanes, the batch is the
    /// lanes' sequences, `lm::layers`).
    pub fn forward(&self, ids: &Tensor, train: bool) -> Tensor {
        let (_, t) = ids.size2().expect("[batch, seq]");
        let dev = ids.device();
        let mut xs = self.embed_tokens.forward(ids);
        let pos = Tensor::arange(t, (Kind::Float, dev)).unsqueeze(1);
        let freqs = pos * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let kind = xs.kind();
        let (cos, sin) = (emb.cos().to_kind(kind), emb.sin().to_kind(kind));
        for l in &self.layers {
            xs = l.forward(&xs, &cos, &sin, train);
        }
        let xs = self.norm.forward(&xs);
        match &self.lm_head {
            Some(w) => lm_head_logits(&xs, w),
            None => self.embed_tokens.logits(&xs),
        }
    }
}
