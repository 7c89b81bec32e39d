//! AdamW's state on disk: the moments by weight name and each set's step count (one, or one per
//! lane), with a caller's tag, so a killed run that carries AdamW state across documents resumes
//! with the state the original would have (docs/spec.md §2).
use std::path::Path;

use tch::{Kind, Tensor};

use super::{AdamW, FlatWeights};
use crate::error::{Error, Result};

impl AdamW {
    /// Writes the moments, the step counts (one per lane with lanes) and a caller's `tag`
    /// (safetensors, by weight name) atomically to `path`.
    pub fn save(&self, weights: &FlatWeights, path: &Path, tag: i64) -> Result<()> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(2 * weights.slots.len() + 2);
        for s in &weights.slots {
            for (prefix, flat) in [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)] {
                // A lane's view is strided; safetensors writes contiguous tensors only.
                let t = weights
                    .view(flat, s)
                    .contiguous()
                    .to_device(tch::Device::Cpu);
                named.push((format!("{prefix}.{}", s.name), t));
            }
        }
        named.push(("step".into(), Tensor::from_slice(&self.steps()?)));
        named.push(("tag".into(), Tensor::from_slice(&[tag])));
        let tmp = path.with_extension("tmp");
        Tensor::write_safetensors(&named, &tmp)
            .map_err(|e| Error::torch(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// Restores state written by [`AdamW::save`] for the same model and layout; returns its tag.
    pub fn load(&mut self, weights: &FlatWeights, path: &Path) -> Result<i64> {
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| Error::bad_file(path, format!("not an optimizer state: {e}")))?;
        let mut by_name: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
        let mut take = |name: String| {
            by_name.remove(&name).ok_or_else(|| {
                Error::bad_file(
                    path,
                    format!("optimizer state has no `{name}`: saved for another model?"),
                )
            })
        };
        let step = take("step".into())?;
        let tag = take("tag".into())?;
        let steps = Vec::<i64>::try_from(step.to_kind(Kind::Int64).reshape([-1]))
            .map_err(|e| Error::bad_file(path, format!("unreadable step counts: {e}")))?;
        if steps.len() != self.sets() {
            return Err(Error::bad_file(
                path,
                format!(
                    "optimizer state saved for {} set(s) of weights (lanes), this run has {}",
                    steps.len(),
                    self.sets()
                ),
            ));
        }
        tch::no_grad(|| -> Result<()> {
            for s in &weights.slots {
                for (prefix, flat) in [
                    ("exp_avg", &mut self.exp_avg),
                    ("exp_avg_sq", &mut self.exp_avg_sq),
                ] {
                    let name = format!("{prefix}.{}", s.name);
                    let t = take(name.clone())?;
                    let view = weights.view(flat, s);
                    if t.size() != view.size() {
                        return Err(Error::bad_file(
                            path,
                            format!(
                                "`{name}` has shape {:?}, the model's weight {:?}",
                                t.size(),
                                view.size()
                            ),
                        ));
                    }
                    view.shallow_clone().copy_(&t.to_kind(Kind::Float));
                }
            }
            Ok(())
        })?;
        let counts: Vec<f32> = steps.iter().map(|&s| s as f32).collect();
        self.step_counts.copy_(&Tensor::from_slice(&counts));
        Ok(tag.int64_value(&[0]))
    }
}
