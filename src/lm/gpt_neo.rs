//! GPT-Neo (`GPTNeoForCausalLM`): GPT-2-like blocks with layers alternating global and local
//! (sliding-window) causal attention, no 1/√d scaling of attention scores (as HF computes it),
//! `nn.Linear` weights stored `[out, in]`, LM head tied to the token embedding.
use serde::Deserialize;
use tch::nn;
use tch::{Kind, Tensor};

use super::layers::{Embedding, LayerNorm, Linear, Lora};

/// `config.json` of a GPT-Neo model.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Context length.
    pub max_position_embeddings: i64,
    /// Hidden size.
    pub hidden_size: i64,
    /// Number of blocks.
    pub num_layers: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// MLP width; 4·hidden when absent.
    #[serde(default)]
    pub intermediate_size: Option<i64>,
    /// `[[["global", "local"], 12]]`: a pattern and how often it repeats.
    pub attention_types: Vec<(Vec<String>, usize)>,
    /// Window of the local layers.
    #[serde(default = "default_window")]
    pub window_size: i64,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Dropout on the embeddings.
    #[serde(default)]
    pub embed_dropout: f64,
    /// Dropout on attention probabilities.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Dropout after residual branches.
    #[serde(default)]
    pub resid_dropout: f64,
    /// End-of-text token id.
    #[serde(default)]
    pub eos_token_id: Option<i64>,
    /// LoRA adapters to add (`--adapter lora`); not part of config.json.
    #[serde(skip)]
    pub lora: Option<Lora>,
}

fn default_window() -> i64 {
    256
}
fn default_eps() -> f64 {
    1e-5
}

impl Config {
    /// `global` or `local` for each layer.
    pub fn layer_kinds(&self) -> Vec<String> {
        self.attention_types
            .iter()
            .flat_map(|(pattern, n)| std::iter::repeat_n(pattern.clone(), *n).flatten())
            .collect()
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    n_head: i64,
    window: Option<i64>,
    attn_dropout: f64,
    resid_dropout: f64,
}

impl Attention {
    fn new(vs: nn::Path, cfg: &Config, local: bool) -> Self {
        let h = cfg.hidden_size;
        Self {
            q_proj: Linear::new(&vs / "q_proj", h, h, false, cfg.lora.as_ref()),
            k_proj: Linear::new(&vs / "k_proj", h, h, false, cfg.lora.as_ref()),
            v_proj: Linear::new(&vs / "v_proj", h, h, false, cfg.lora.as_ref()),
            out_proj: Linear::new(&vs / "out_proj", h, h, true, cfg.lora.as_ref()),
            n_head: cfg.num_heads,
            window: local.then_some(cfg.window_size),
            attn_dropout: cfg.attention_dropout,
            resid_dropout: cfg.resid_dropout,
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let (b, t, c) = xs.size3().expect("[batch, seq, hidden]");
        let heads = |x: Tensor| x.view([b, t, self.n_head, c / self.n_head]).transpose(1, 2);
        let (q, k, v) = (
            heads(self.q_proj.forward(xs)),
            heads(self.k_proj.forward(xs)),
            heads(self.v_proj.forward(xs)),
        );
        let p = if train { self.attn_dropout } else { 0.0 };
        let y = match self.window {
            // HF's GPT-Neo does not scale scores by 1/sqrt(head_dim).
            None => Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<Tensor>,
                p,
                true,
                Some(1.0),
                false,
            ),
            Some(w) => {
                // Query i sees keys j with i - w < j <= i.
                let i = Tensor::arange(t, (Kind::Int64, xs.device())).unsqueeze(1);
                let j = Tensor::arange(t, (Kind::Int64, xs.device())).unsqueeze(0);
                let mask = j.le_tensor(&i).logical_and(&j.gt_tensor(&(&i - w)));
                Tensor::scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    Some(mask),
                    p,
                    false,
                    Some(1.0),
                    false,
                )
            }
        };
        let y = y.transpose(1, 2).contiguous().view([b, t, c]);
        self.out_proj.forward(&y).dropout(self.resid_dropout, train)
    }
}

#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    resid_dropout: f64,
}

impl Block {
    fn new(vs: nn::Path, cfg: &Config, local: bool) -> Self {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_epsilon);
        let inner = cfg.intermediate_size.unwrap_or(4 * h);
        Self {
            ln_1: LayerNorm::new(&vs / "ln_1", h, eps),
            attn: Attention::new(&vs / "attn" / "attention", cfg, local),
            ln_2: LayerNorm::new(&vs / "ln_2", h, eps),
            c_fc: Linear::new(&vs / "mlp" / "c_fc", h, inner, true, cfg.lora.as_ref()),
            c_proj: Linear::new(&vs / "mlp" / "c_proj", inner, h, true, cfg.lora.as_ref()),
            resid_dropout: cfg.resid_dropout,
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let xs = xs + self.attn.forward(&self.ln_1.forward(xs), train);
        let mlp = self
            .c_proj
            .forward(&self.c_fc.forward(&self.ln_2.forward(&xs)).gelu("tanh"));
        &xs + mlp.dropout(self.resid_dropout, train)
    }
}

/// GPT-Neo with its LM head.
#[derive(Debug)]
pub struct GptNeo {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    embed_dropout: f64,
}

impl GptNeo {
    /// Creates the variables under `transformer.*`, HF's names.
    pub fn new(vs: nn::Path, cfg: &Config) -> Self {
        let t = &vs / "transformer";
        let kinds = cfg.layer_kinds();
        Self {
            wte: Embedding::new(&t / "wte", cfg.vocab_size, cfg.hidden_size),
            wpe: Embedding::new(&t / "wpe", cfg.max_position_embeddings, cfg.hidden_size),
            blocks: (0..cfg.num_layers)
                .map(|i| {
                    Block::new(
                        &t / "h" / i,
                        cfg,
                        kinds.get(i as usize).map(|k| k == "local").unwrap_or(false),
                    )
                })
                .collect(),
            ln_f: LayerNorm::new(&t / "ln_f", cfg.hidden_size, cfg.layer_norm_epsilon),
            embed_dropout: cfg.embed_dropout,
        }
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (under lanes, the batch is the
    /// lanes' sequences, `lm::layers`).
    pub fn forward(&self, ids: &Tensor, train: bool) -> Tensor {
        let (batch, t) = ids.size2().expect("[batch, seq]");
        let mut xs = (self.wte.forward(ids) + self.wpe.first_rows(t, batch))
            .dropout(self.embed_dropout, train);
        for b in &self.blocks {
            xs = b.forward(&xs, train);
        }
        self.wte.logits(&self.ln_f.forward(&xs))
    }
}
