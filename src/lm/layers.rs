//! The layers the model families share, by HF names, each computing with one set of weights or
//! with one set per lane.
//!
//! Under `tttnn run --lanes L` every trainable weight is a view of shape `[L, ...]` into the
//! lanes' flat buffer (`ttt::FlatWeights`): lane `l` of the input batch (`[L, seq, hidden]`) goes
//! through lane `l`'s weights, so L documents train at once with batched matmuls. A batch of
//! `L·r` sequences (`--neighbors-per-step r`: r chunks per lane's step) holds lane `l`'s in rows
//! `l·r..(l+1)·r`; a weighted layer computes it as `[L, r·seq, hidden]` ([`by_lane`]), which
//! changes nothing for position-wise layers, and attention (no weights) sees the `L·r`
//! sequences apart. The model states its layout (`lm::Layout`, checked against every batch in
//! `LanguageModel::forward`); a layer follows it through its weight's rank, and with one set of
//! weights it computes exactly as before lanes (the single kernels: `addmm`, `linear`, fused
//! LayerNorm).
//!
//! With `--adapter lora` the linear layers named in [`Lora::targets`] also carry a LoRA adapter
//! (PEFT's `lora_A`, `lora_B`): the base weights are frozen and shared by every lane, and only the
//! adapters are trained (and laned).
use tch::nn;
use tch::{Kind, Tensor};

/// LoRA adapters (Hu et al. 2021, as PEFT builds them): `y = W x + (α / r) · B A x` on each target
/// layer, `A` `[r, in]` drawn uniformly in ±1/√in (PEFT's `kaiming_uniform_(a = √5)`), `B` `[out, r]`
/// zero, so training starts from the base model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Lora {
    /// r: the adapters' rank.
    pub rank: i64,
    /// α: the update is scaled by α / r.
    pub alpha: f64,
    /// Names of the linear layers adapted (`q_proj`, `c_attn`, ...).
    pub targets: Vec<String>,
}

impl Lora {
    /// PEFT's default targets for a model type (its `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
    pub fn default_targets(model_type: &str) -> Vec<String> {
        let names: &[&str] = match model_type {
            "gpt2" => &["c_attn"],
            _ => &["q_proj", "v_proj"],
        };
        names.iter().map(|n| n.to_string()).collect()
    }

    /// The adapter of the layer at `vs` (`n_in` → `n_out`) when its name is a target.
    fn adapter(&self, vs: &nn::Path, n_in: i64, n_out: i64) -> Option<LoraPair> {
        let name = vs.components().last()?;
        if !self.targets.iter().any(|t| t == name) {
            return None;
        }
        let bound = 1.0 / (n_in as f64).sqrt();
        Some(LoraPair {
            a: (vs / "lora_A").var(
                "weight",
                &[self.rank, n_in],
                nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            ),
            b: (vs / "lora_B").var("weight", &[n_out, self.rank], nn::Init::Const(0.)),
            scale: self.alpha / self.rank as f64,
        })
    }
}

/// One layer's LoRA adapter.
#[derive(Debug)]
struct LoraPair {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

impl LoraPair {
    /// `(α / r) · B A x` (one adapter per lane under lanes).
    fn forward(&self, xs: &Tensor) -> Tensor {
        if per_lane(&self.a, 2) {
            let x = by_lane(xs, self.a.size()[0]);
            let ys = x
                .matmul(&self.a.transpose(1, 2))
                .matmul(&self.b.transpose(1, 2))
                * self.scale;
            return as_batch(ys, xs);
        }
        xs.matmul(&self.a.tr()).matmul(&self.b.tr()) * self.scale
    }
}

/// `ys` plus the adapter's update of `xs`, if the layer has one.
fn adapted(ys: Tensor, xs: &Tensor, lora: &Option<LoraPair>) -> Tensor {
    match lora {
        Some(l) => ys + l.forward(xs),
        None => ys,
    }
}

/// True when `weight` (of rank `rank` with one set of weights) holds one set per lane.
fn per_lane(weight: &Tensor, rank: usize) -> bool {
    weight.dim() == rank + 1
}

/// `xs`, a batch of `L·r` sequences (`[L·r, seq, ...]`, lane l's r rows consecutive), as
/// `[L, r·seq, ...]` for `lanes` = L sets of weights: each lane's rows one after another, as a
/// position-wise layer computes them with its lane's weights. `xs` itself when r = 1.
fn by_lane(xs: &Tensor, lanes: i64) -> Tensor {
    let size = xs.size();
    if size[0] == lanes {
        return xs.shallow_clone();
    }
    let mut shape = vec![lanes, -1];
    shape.extend_from_slice(&size[2..]);
    xs.reshape(shape.as_slice())
}

/// `ys` (`[L, r·seq, out]`, computed [`by_lane`]) back in the batch's shape `like` has
/// (`[L·r, seq, ...]`), its last dimension `ys`'.
fn as_batch(ys: Tensor, like: &Tensor) -> Tensor {
    let size = like.size();
    if size[0] == ys.size()[0] {
        return ys;
    }
    let mut shape = size[..size.len() - 1].to_vec();
    shape.push(*ys.size().last().expect("at least one dimension"));
    ys.reshape(shape.as_slice())
}

/// `nn.Linear`: `weight` `[out, in]`, optional `bias` `[out]`.
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraPair>,
}

impl Linear {
    /// The variables `weight` and (with `bias`) `bias` under `vs`, and an adapter when `lora`
    /// targets this layer.
    pub fn new(vs: nn::Path, n_in: i64, n_out: i64, bias: bool, lora: Option<&Lora>) -> Self {
        Self {
            weight: vs.var("weight", &[n_out, n_in], nn::Init::Const(0.)),
            bias: bias.then(|| vs.var("bias", &[n_out], nn::Init::Const(0.))),
            lora: lora.and_then(|l| l.adapter(&vs, n_in, n_out)),
        }
    }

    /// `xs @ weightᵀ + bias` (+ the adapter's update).
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let ys = if !per_lane(&self.weight, 2) {
            xs.linear(&self.weight, self.bias.as_ref())
        } else {
            let ys = by_lane(xs, self.weight.size()[0]).matmul(&self.weight.transpose(1, 2));
            let ys = match &self.bias {
                Some(b) => ys + b.unsqueeze(1),
                None => ys,
            };
            as_batch(ys, xs)
        };
        adapted(ys, xs, &self.lora)
    }
}

/// HF's Conv1D (GPT-2): a linear layer whose weight is stored transposed, `[in, out]`.
#[derive(Debug)]
pub struct Conv1D {
    weight: Tensor,
    bias: Tensor,
    lora: Option<LoraPair>,
}

impl Conv1D {
    /// The variables `weight` and `bias` under `vs`, and an adapter when `lora` targets this
    /// layer.
    pub fn new(vs: nn::Path, n_in: i64, n_out: i64, lora: Option<&Lora>) -> Self {
        Self {
            weight: vs.var("weight", &[n_in, n_out], nn::Init::Const(0.)),
            bias: vs.var("bias", &[n_out], nn::Init::Const(0.)),
            lora: lora.and_then(|l| l.adapter(&vs, n_in, n_out)),
        }
    }

    /// `xs @ weight + bias` (+ the adapter's update).
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let ys = if per_lane(&self.weight, 2) {
            let x = by_lane(xs, self.weight.size()[0]);
            as_batch(self.bias.unsqueeze(1).baddbmm(&x, &self.weight, 1, 1), xs)
        } else {
            // One fused GEMM with the bias, as HF's Conv1D (`torch.addmm`).
            let mut shape = xs.size();
            let n_in = shape.pop().expect("at least one dimension");
            let ys = self.bias.addmm(&xs.reshape([-1, n_in]), &self.weight);
            shape.push(self.weight.size()[1]);
            ys.view(shape.as_slice())
        };
        adapted(ys, xs, &self.lora)
    }
}

/// `nn.LayerNorm` over the last dimension, with `weight` and `bias`.
#[derive(Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    /// The variables `weight` and `bias` under `vs`.
    pub fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: vs.var("weight", &[dim], nn::Init::Const(1.)),
            bias: vs.var("bias", &[dim], nn::Init::Const(0.)),
            dim,
            eps,
        }
    }

    /// Normalised `xs`, scaled and shifted.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        if !per_lane(&self.weight, 1) {
            return xs.layer_norm(
                [self.dim],
                Some(&self.weight),
                Some(&self.bias),
                self.eps,
                false,
            );
        }
        let normed = xs.layer_norm([self.dim], None::<Tensor>, None::<Tensor>, self.eps, false);
        let normed = by_lane(&normed, self.weight.size()[0]);
        as_batch(
            normed * self.weight.unsqueeze(1) + self.bias.unsqueeze(1),
            xs,
        )
    }
}

/// `nn.Embedding`: `weight` `[vocab, hidden]`.
#[derive(Debug)]
pub struct Embedding {
    weight: Tensor,
}

impl Embedding {
    /// The variable `weight` under `vs`.
    pub fn new(vs: nn::Path, n: i64, dim: i64) -> Self {
        Self {
            weight: vs.var("weight", &[n, dim], nn::Init::Const(0.)),
        }
    }

    /// Rows of `ids` (`[batch, seq]`; under lanes the batch is the lanes' sequences).
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        if !per_lane(&self.weight, 2) {
            return Tensor::embedding(&self.weight, ids, -1, false, false);
        }
        let (lanes, dim) = (self.weight.size()[0], self.weight.size()[2]);
        let (batch, seq) = ids.size2().expect("[batch, seq]");
        let ids = by_lane(ids, lanes);
        let rows = self.weight.gather(
            1,
            &ids.unsqueeze(-1).expand([lanes, ids.size()[1], dim], false),
            false,
        );
        if batch == lanes {
            rows
        } else {
            rows.reshape([batch, seq, dim])
        }
    }

    /// The rows for positions `0..n` of a batch of `batch` sequences: `[n, dim]` with one set of
    /// weights (it broadcasts), `[batch, n, dim]` under lanes (each sequence its lane's).
    pub fn first_rows(&self, n: i64, batch: i64) -> Tensor {
        if !per_lane(&self.weight, 2) {
            return self.weight.narrow(0, 0, n);
        }
        let rows = self.weight.narrow(1, 0, n);
        let lanes = rows.size()[0];
        if batch == lanes {
            rows
        } else {
            rows.repeat_interleave_self_int(batch / lanes, Some(0), None)
        }
    }

    /// `xs @ weightᵀ`: the LM head tied to this embedding.
    pub fn logits(&self, xs: &Tensor) -> Tensor {
        lm_head_logits(xs, &self.weight)
    }
}

/// `xs @ weightᵀ`: logits of an LM head `weight` `[vocab, hidden]` (or one per lane).
pub fn lm_head_logits(xs: &Tensor, weight: &Tensor) -> Tensor {
    if per_lane(weight, 2) {
        as_batch(
            by_lane(xs, weight.size()[0]).matmul(&weight.transpose(1, 2)),
            xs,
        )
    } else {
        xs.matmul(&weight.tr())
    }
}

/// RMSNorm in fp32, as HF's `LlamaRMSNorm`.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// The variable `weight` under `vs`.
    pub fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: vs.var("weight", &[dim], nn::Init::Const(1.0)),
            eps,
        }
    }

    /// `weight · xs / rms(xs)`.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let kind = xs.kind();
        let x = xs.to_kind(Kind::Float);
        let var = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = (x * (var + self.eps).rsqrt()).to_kind(kind);
        if per_lane(&self.weight, 1) {
            as_batch(
                self.weight.unsqueeze(1) * by_lane(&normed, self.weight.size()[0]),
                xs,
            )
        } else {
            &self.weight * normed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::LanguageModel;
    use crate::ttt::{TrainConfig, Trainer};
    use crate::Device;

    fn dir(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name)
    }

    fn lora(targets: &[&str]) -> Lora {
        Lora {
            rank: 4,
            alpha: 8.0,
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn lora_starts_as_the_base_model_and_trains_only_its_adapters() {
        let ids = Tensor::from_slice(&[5i64, 17, 3, 99, 42, 7, 8]).unsqueeze(0);
        for (family, default_target) in [("tiny-gpt2", "c_attn"), ("tiny-llama", "q_proj")] {
            let base = LanguageModel::load(&dir(family), Device::Cpu).unwrap();
            let lm = LanguageModel::load_with(&dir(family), Device::Cpu, Some(&lora(&[]))).unwrap();
            let targets = &lm.lora.as_ref().unwrap().targets;
            assert!(targets.iter().any(|t| t == default_target), "{targets:?}");
            let before = tch::no_grad(|| base.forward(&ids, false)).unwrap();
            let same = tch::no_grad(|| lm.forward(&ids, false)).unwrap();
            assert_eq!((before - &same).abs().max().double_value(&[]), 0.0, "B = 0");

            let frozen: Vec<(String, Tensor)> = lm
                .var_store()
                .variables()
                .into_iter()
                .filter(|(n, _)| !crate::lm::weights::is_adapter(n))
                .map(|(n, t)| (n, t.copy()))
                .collect();
            let mut trainer = Trainer::new(
                &lm,
                TrainConfig {
                    lr: 1e-2,
                    ..Default::default()
                },
            )
            .unwrap();
            trainer
                .train_on_tokens(&lm, &[5, 17, 3, 99, 42, 7, 8, 9])
                .unwrap();
            let vars = lm.var_store().variables();
            for (name, t) in &frozen {
                assert_eq!(
                    vars[name].ne_tensor(t).sum(Kind::Int64).int64_value(&[]),
                    0,
                    "{name}"
                );
            }
            let after = tch::no_grad(|| lm.forward(&ids, false)).unwrap();
            assert!(
                (after - same).abs().max().double_value(&[]) > 1e-4,
                "{family}: adapters train"
            );
        }
    }

    #[test]
    fn a_lora_target_no_layer_has_is_refused_naming_the_layers() {
        let err =
            LanguageModel::load_with(&dir("tiny-llama"), Device::Cpu, Some(&lora(&["c_attn"])))
                .err()
                .unwrap()
                .to_string();
        assert!(err.contains("`c_attn`") && err.contains("q_proj"), "{err}");
    }
}
