//! GPT-2 (`GPT2LMHeadModel`): learned positions, pre-LayerNorm blocks, Conv1D weights stored
//! `[in, out]`, tanh-approximated GELU, LM head tied to the token embedding.
use serde::Deserialize;
use tch::nn;
use tch::Tensor;

use super::layers::{Conv1D, Embedding, LayerNorm, Lora};

/// `config.json` of a GPT-2 model.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Context length.
    pub n_positions: i64,
    /// Hidden size.
    pub n_embd: i64,
    /// Number of blocks.
    pub n_layer: i64,
    /// Attention heads.
    pub n_head: i64,
    /// MLP width; 4·n_embd when absent.
    #[serde(default)]
    pub n_inner: Option<i64>,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Dropout after residual branches.
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    /// Dropout on the embeddings.
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
    /// End-of-text token id.
    #[serde(default)]
    pub eos_token_id: Option<i64>,
    /// LoRA adapters to add (`--adapter lora`); not part of config.json.
    #[serde(skip)]
    pub lora: Option<Lora>,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_dropout() -> f64 {
    0.1
}

#[derive(Debug)]
struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: i64,
    attn_pdrop: f64,
    resid_pdrop: f64,
}

impl Attention {
    fn new(vs: nn::Path, cfg: &Config) -> Self {
        Self {
            c_attn: Conv1D::new(
                &vs / "c_attn",
                cfg.n_embd,
                3 * cfg.n_embd,
                cfg.lora.as_ref(),
            ),
            c_proj: Conv1D::new(&vs / "c_proj", cfg.n_embd, cfg.n_embd, cfg.lora.as_ref()),
            n_head: cfg.n_head,
            attn_pdrop: cfg.attn_pdrop,
            resid_pdrop: cfg.resid_pdrop,
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let (b, t, c) = xs.size3().expect("[batch, seq, hidden]");
        let qkv = self.c_attn.forward(xs).split(c, 2);
        let heads = |x: &Tensor| x.view([b, t, self.n_head, c / self.n_head]).transpose(1, 2);
        let p = if train { self.attn_pdrop } else { 0.0 };
        let y = Tensor::scaled_dot_product_attention(
            &heads(&qkv[0]),
            &heads(&qkv[1]),
            &heads(&qkv[2]),
            None::<Tensor>,
            p,
            true,
            None,
            false,
        );
        let y = y.transpose(1, 2).contiguous().view([b, t, c]);
        self.c_proj.forward(&y).dropout(self.resid_pdrop, train)
    }
}

#[derive(Debug)]
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    resid_pdrop: f64,
}

impl Mlp {
    fn new(vs: nn::Path, cfg: &Config) -> Self {
        let inner = cfg.n_inner.unwrap_or(4 * cfg.n_embd);
        Self {
            c_fc: Conv1D::new(&vs / "c_fc", cfg.n_embd, inner, cfg.lora.as_ref()),
            c_proj: Conv1D::new(&vs / "c_proj", inner, cfg.n_embd, cfg.lora.as_ref()),
            resid_pdrop: cfg.resid_pdrop,
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        self.c_proj
            .forward(&self.c_fc.forward(xs).gelu("tanh"))
            .dropout(self.resid_pdrop, train)
    }
}

#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(vs: nn::Path, cfg: &Config) -> Self {
        let eps = cfg.layer_norm_epsilon;
        Self {
            ln_1: LayerNorm::new(&vs / "ln_1", cfg.n_embd, eps),
            attn: Attention::new(&vs / "attn", cfg),
            ln_2: LayerNorm::new(&vs / "ln_2", cfg.n_embd, eps),
            mlp: Mlp::new(&vs / "mlp", cfg),
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        let xs = xs + self.attn.forward(&self.ln_1.forward(xs), train);
        &xs + self.mlp.forward(&self.ln_2.forward(&xs), train)
    }
}

/// GPT-2 with its LM head.
#[derive(Debug)]
pub struct Gpt2 {
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    embd_pdrop: f64,
}

impl Gpt2 {
    /// Creates the variables under `transformer.*`, HF's names.
    pub fn new(vs: nn::Path, cfg: &Config) -> Self {
        let t = &vs / "transformer";
        Self {
            wte: Embedding::new(&t / "wte", cfg.vocab_size, cfg.n_embd),
            wpe: Embedding::new(&t / "wpe", cfg.n_positions, cfg.n_embd),
            blocks: (0..cfg.n_layer)
                .map(|i| Block::new(&t / "h" / i, cfg))
                .collect(),
            ln_f: LayerNorm::new(&t / "ln_f", cfg.n_embd, cfg.layer_norm_epsilon),
            embd_pdrop: cfg.embd_pdrop,
        }
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (under lanes, the batch is the
    /// lanes' sequences, `lm::layers`).
    pub fn forward(&self, ids: &Tensor, train: bool) -> Tensor {
        let (batch, t) = ids.size2().expect("[batch, seq]");
        let mut xs =
            (self.wte.forward(ids) + self.wpe.first_rows(t, batch)).dropout(self.embd_pdrop, train);
        for b in &self.blocks {
            xs = b.forward(&xs, train);
        }
        self.wte.logits(&self.ln_f.forward(&xs))
    }
}
