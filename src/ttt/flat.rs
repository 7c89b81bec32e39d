//! The trainable weights as views into flat buffers, laid out once per model or once per lane.
//!
//! Every trainable weight of the model is made a view into one flat tensor (`set_data`, as
//! PyTorch's DDP does with `gradient_as_bucket_view`), and so is every gradient. AdamW and
//! `clip_grad_norm_` then run as a handful of kernels on whole buffers instead of about ten kernels
//! per weight tensor (≈1,500 launches per step for GPT-2's 148 tensors; a batch-1 step on a GPU is
//! bound by the host launching them). The clip coefficient stays on the device: no host sync.
//!
//! With [`Precision::Bf16`] this is mixed precision: the flat fp32 buffer holds the master weights
//! and AdamW's moments, the model computes with bf16 working weights (a second flat buffer, copied
//! from the masters after every step), its gradients come out in bf16 and are widened to fp32
//! before clipping and the update. Pure bf16 AdamW loses most updates at the paper's learning rates
//! (lr 2e-5 moves a weight by far less than bf16's 2⁻⁸ relative step).
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::lm::{LanguageModel, Layout, Precision};

/// Where one weight lives in the flat buffers.
#[derive(Debug, Clone)]
pub(super) struct Slot {
    /// HF name.
    pub name: String,
    /// First element in the flat buffers.
    pub offset: i64,
    /// Elements.
    pub numel: i64,
    /// The weight's shape.
    pub shape: Vec<i64>,
}

/// The model's trainable weights and their gradients as views into flat buffers, plus the
/// pretrained values for the per-document reset.
pub struct FlatWeights {
    pub(super) slots: Vec<Slot>,
    /// fp32 weights: the model's own with fp32, the masters with bf16.
    pub(super) master: Tensor,
    /// bf16 working weights the model computes with (mixed precision only).
    working: Option<Tensor>,
    /// Gradients, in the model's dtype; each weight's `.grad` is a view into it.
    grad: Tensor,
    /// fp32 copy of the pretrained weights.
    pub(super) pretrained: Tensor,
    /// `Single`: every buffer is `[P]`; `Lanes(L)`: every buffer but `pretrained` is `[L, P]`.
    layout: Layout,
}

impl FlatWeights {
    /// Moves `lm`'s trainable weights (expected in fp32) into flat buffers in `precision`, one set.
    pub fn new(lm: &LanguageModel, precision: Precision) -> Result<Self> {
        Self::build(lm, precision, Layout::Single)
    }

    /// As [`FlatWeights::new`] with `lanes` copies of every weight, each starting pretrained; the
    /// model is laid out for `lanes` lanes and computes lane `l` of its batch with copy `l`.
    pub fn with_lanes(lm: &mut LanguageModel, precision: Precision, lanes: usize) -> Result<Self> {
        let flat = Self::build(lm, precision, Layout::Lanes(lanes))?;
        lm.set_layout(Layout::Lanes(lanes));
        Ok(flat)
    }

    /// Lays `lm`'s weights out as `layout`; a model already laid out for lanes is refused.
    fn build(lm: &LanguageModel, precision: Precision, layout: Layout) -> Result<Self> {
        if lm.layout() != Layout::Single {
            return Err(Error::internal(format!(
                "{}: its weights are laid out for lanes already",
                lm.dir.display()
            )));
        }
        let mut vars: Vec<(String, Tensor)> = lm
            .var_store()
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        // Sorted by name: a saved optimizer state maps back by name, whatever the map order.
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut slots = Vec::with_capacity(vars.len());
        let mut offset = 0;
        for (name, t) in &vars {
            let numel = t.numel() as i64;
            slots.push(Slot {
                name: name.clone(),
                offset,
                numel,
                shape: t.size(),
            });
            offset += numel;
        }
        let device = lm.device();
        precision.apply(device)?;
        let work_kind = match precision {
            Precision::Fp32 | Precision::Tf32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        };
        if work_kind != Kind::Float {
            // Frozen weights (the base under LoRA) are only computed with: bf16 like the rest.
            for (name, mut t) in lm.var_store().variables() {
                if !t.requires_grad() {
                    let narrow = t.to_kind(work_kind);
                    t.f_set_data(&narrow)
                        .map_err(|e| Error::torch(format!("casting frozen weight {name}"), e))?;
                }
            }
        }
        let flat = tch::no_grad(|| -> Result<Self> {
            let pretrained = Tensor::empty([offset], (Kind::Float, device));
            for (slot, (_, t)) in slots.iter().zip(&vars) {
                pretrained
                    .narrow(0, slot.offset, slot.numel)
                    .copy_(&t.to_kind(Kind::Float).reshape([-1]));
            }
            let master = match layout {
                Layout::Single => pretrained.copy(),
                Layout::Lanes(l) => pretrained.unsqueeze(0).repeat([l as i64, 1]),
            };
            let working = (work_kind != Kind::Float).then(|| master.to_kind(work_kind));
            let grad = Tensor::zeros(master.size(), (work_kind, device));
            let flat = Self {
                slots,
                master,
                working,
                grad,
                pretrained,
                layout,
            };
            let model_buf = flat.working.as_ref().unwrap_or(&flat.master);
            for (slot, (name, t)) in flat.slots.iter().zip(vars.iter_mut()) {
                t.f_set_data(&flat.view(model_buf, slot))
                    .map_err(|e| Error::torch(format!("flattening weight {name}"), e))?;
            }
            Ok(flat)
        })?;
        flat.bind_grads(&vars)?;
        Ok(flat)
    }

    /// Makes each weight's `.grad` a view into the flat gradient buffer. Autograd accumulates into
    /// a defined `.grad` in place, so one zero-gradient backward pass creates them, then their data
    /// is swapped for the views.
    fn bind_grads(&self, vars: &[(String, Tensor)]) -> Result<()> {
        let touch = vars
            .iter()
            .map(|(_, t)| t.sum(Kind::Float))
            .reduce(|a, b| a + b);
        if let Some(touch) = touch {
            (touch * 0.0).backward();
        }
        tch::no_grad(|| {
            for (slot, (name, t)) in self.slots.iter().zip(vars) {
                let mut g = t.grad();
                if !g.defined() {
                    return Err(Error::internal(format!("weight {name} got no gradient")));
                }
                g.f_set_data(&self.view(&self.grad, slot))
                    .map_err(|e| Error::torch(format!("flattening the gradient of {name}"), e))?;
            }
            Ok(())
        })
    }

    /// Zeroes every gradient (one kernel).
    pub fn zero_grad(&mut self) {
        let _ = self.grad.zero_();
    }

    /// The gradients in fp32: the flat buffer itself, or a widened copy of the bf16 one.
    pub(super) fn grad_fp32(&self) -> Tensor {
        match self.working {
            None => self.grad.shallow_clone(),
            Some(_) => self.grad.to_kind(Kind::Float),
        }
    }

    /// Copies the fp32 weights into the bf16 working weights (mixed precision only).
    pub(super) fn refresh_working(&mut self) {
        if let Some(w) = &mut self.working {
            w.copy_(&self.master);
        }
    }

    /// Restores the pretrained weights in place (of every lane).
    pub fn reset(&mut self) {
        tch::no_grad(|| {
            self.master.copy_(&self.pretrained);
            self.refresh_working();
        })
    }

    /// Restores the pretrained weights of lane `lane` in place.
    pub fn reset_lane(&mut self, lane: usize) {
        tch::no_grad(|| {
            let row = self.master.get(lane as i64);
            row.shallow_clone().copy_(&self.pretrained);
            if let Some(w) = &self.working {
                w.get(lane as i64).copy_(&row);
            }
        })
    }

    /// Weight `slot` in `flat`: `[shape]`, or `[lanes, shape]` with lanes.
    pub(super) fn view(&self, flat: &Tensor, slot: &Slot) -> Tensor {
        match self.layout {
            Layout::Single => view(flat, slot),
            Layout::Lanes(l) => {
                let mut shape = vec![l as i64];
                shape.extend_from_slice(&slot.shape);
                flat.narrow(1, slot.offset, slot.numel).view(&shape[..])
            }
        }
    }

    /// One set of weights, or one per lane.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Sets of weights: 1, or the lanes.
    pub fn lanes(&self) -> usize {
        match self.layout {
            Layout::Single => 1,
            Layout::Lanes(l) => l,
        }
    }

    /// Writes the fp32 weights by HF name to `path` (safetensors, on the CPU); with lanes, every
    /// lane's as `[lanes, ...]`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let named: Vec<(String, Tensor)> = self
            .slots
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    self.view(&self.master, s)
                        .contiguous()
                        .to_device(tch::Device::Cpu),
                )
            })
            .collect();
        Tensor::write_safetensors(&named, path)
            .map_err(|e| Error::torch(format!("writing {}", path.display()), e))
    }

    /// Trainable elements.
    pub fn numel(&self) -> i64 {
        self.slots.iter().map(|s| s.numel).sum()
    }
}

fn view(flat: &Tensor, slot: &Slot) -> Tensor {
    flat.narrow(0, slot.offset, slot.numel)
        .view(&slot.shape[..])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ttt::{AdamW, TrainConfig};
    use crate::Device;

    pub(crate) fn tiny_gpt2() -> LanguageModel {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models/tiny-gpt2");
        LanguageModel::load(&dir, Device::Cpu).unwrap()
    }

    /// The mean next-token loss of `ids` (one sequence).
    pub(crate) fn loss(lm: &LanguageModel, ids: &[i64]) -> Tensor {
        let t = Tensor::from_slice(ids).unsqueeze(0);
        let logits = lm.forward(&t, false).unwrap();
        let n = ids.len() as i64;
        logits
            .narrow(1, 0, n - 1)
            .reshape([n - 1, lm.vocab_size])
            .to_kind(Kind::Float)
            .cross_entropy_for_logits(&t.narrow(1, 1, n - 1).reshape([n - 1]))
    }

    #[test]
    fn mixed_precision_keeps_fp32_masters_and_bf16_working_weights() {
        let lm = tiny_gpt2();
        let mut flat = FlatWeights::new(&lm, Precision::Bf16).unwrap();
        let mut opt = AdamW::new(
            &flat,
            TrainConfig {
                lr: 2e-5,
                ..Default::default()
            },
        );
        let ids: Vec<i64> = (0..24).map(|i| (i * 37) % 200 + 3).collect();
        let name = "transformer.h.0.mlp.c_fc.weight";
        let before = flat.master(name).copy();
        flat.zero_grad();
        loss(&lm, &ids).backward();
        let _ = opt
            .step(
                &mut flat,
                &Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)),
                None,
            )
            .unwrap();
        let after = flat.master(name);
        // At lr 2e-5 nearly every fp32 master weight moves; in bf16 most of these updates would
        // round away.
        let changed = after
            .ne_tensor(&before)
            .to_kind(Kind::Float)
            .mean(Kind::Float);
        assert!(changed.double_value(&[]) > 0.99, "{changed}");
        let vars = lm.var_store().variables();
        let working = &vars[name];
        assert_eq!(working.kind(), Kind::BFloat16);
        assert_eq!(
            working
                .to_kind(Kind::Float)
                .ne_tensor(&after.to_kind(Kind::BFloat16).to_kind(Kind::Float))
                .sum(Kind::Int64)
                .int64_value(&[]),
            0,
            "working weights are the rounded masters"
        );
        flat.reset();
        assert_eq!(
            flat.master(name)
                .ne_tensor(&before)
                .sum(Kind::Int64)
                .int64_value(&[]),
            0
        );
    }

    impl FlatWeights {
        /// The fp32 master weight `name` (a view of the flat buffer).
        pub(crate) fn master(&self, name: &str) -> Tensor {
            self.named(&self.master, name)
        }

        /// The pretrained copy of weight `name`.
        pub(crate) fn pretrained_of(&self, name: &str) -> Tensor {
            self.named(&self.pretrained, name)
        }

        pub(crate) fn named(&self, flat: &Tensor, name: &str) -> Tensor {
            let s = self.slots.iter().find(|s| s.name == name).unwrap();
            view(flat, s)
        }
    }
}
