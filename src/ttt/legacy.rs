//! The training step as it was before neighbour schedules (issue #39): one chunk, one AdamW step,
//! its outcome read at once. Kept under `cfg(test)` only as half of the bit-identity gate the
//! schedules' engine must pass with its defaults (`runner/legacy.rs`); deleted once it does.
use tch::{Kind, Tensor};

use super::{chunks, Chunk, ChunkStep, TextTraining, Trainer, IGNORE_INDEX};
use crate::error::Result;
use crate::lm::LanguageModel;

impl Trainer {
    /// One AdamW step per `max_length` chunk of `tokens`, in order, each as the step before issue
    /// #39 took it (one chunk's `[1, len]` buffers, the mean loss, clipping and the fused update),
    /// booked chunk by chunk.
    pub(crate) fn legacy_train_on_tokens(
        &mut self,
        lm: &LanguageModel,
        tokens: &[i64],
    ) -> Result<TextTraining> {
        let mut out = TextTraining::new(tokens.len());
        let mut loss_sum = 0.0;
        for chunk in chunks(tokens, &self.config) {
            out.chunks += 1;
            match self.legacy_step(lm, &chunk)? {
                ChunkStep::Trained(loss) => {
                    out.steps += 1;
                    loss_sum += loss;
                }
                ChunkStep::NonFinite => out.skipped_nonfinite += 1,
                ChunkStep::ZeroGrad => {
                    out.steps += 1;
                    out.zero_grad_steps += 1;
                }
                ChunkStep::SkippedShort => out.skipped_short += 1,
            }
        }
        let with_loss = out.steps - out.zero_grad_steps;
        out.mean_loss = if with_loss > 0 {
            loss_sum / with_loss as f64
        } else {
            f64::NAN
        };
        Ok(out)
    }

    fn legacy_step(&mut self, lm: &LanguageModel, chunk: &Chunk) -> Result<ChunkStep> {
        let device = lm.device();
        let t = match chunk {
            Chunk::Skipped => return Ok(ChunkStep::SkippedShort),
            Chunk::ZeroGrad => {
                self.weights.zero_grad();
                let skip = Tensor::from_slice(&[0f32]).to(device);
                let _ = self.opt.step(&mut self.weights, &skip, None)?;
                return Ok(ChunkStep::ZeroGrad);
            }
            Chunk::Tokens(t) => t,
        };
        let n = t.len() as i64;
        let mut labels = t[1..].to_vec();
        labels.push(IGNORE_INDEX);
        let ids = Tensor::from_slice(t).view([1, n]).to(device);
        let labels = Tensor::from_slice(&labels).view([1, n]).to(device);
        let targets = Tensor::from_slice(&[(n - 1) as f32]).to(device);
        let skip = Tensor::from_slice(&[0f32]).to(device);
        self.weights.zero_grad();
        let logits = lm.forward(&ids, self.config.dropout.on())?;
        let vocab = logits.size()[2];
        let losses = logits
            .view([n, vocab])
            .to_kind(Kind::Float)
            .cross_entropy_loss::<Tensor>(
                &labels.view([n]),
                None,
                tch::Reduction::None,
                IGNORE_INDEX,
                0.0,
            )
            .view([1, n])
            .sum_dim_intlist(&[1i64][..], false, Kind::Float)
            / &targets;
        losses.sum(Kind::Float).backward();
        let nonfinite = losses
            .isfinite()
            .logical_not()
            .to_kind(Kind::Float)
            .maximum(&skip);
        let skipped = self.opt.step(&mut self.weights, &nonfinite, None)?;
        let (loss, skipped) = (losses.double_value(&[0]), skipped.double_value(&[0]));
        Ok(if skipped != 0.0 {
            ChunkStep::NonFinite
        } else {
            ChunkStep::trained(loss as f32 as f64)
        })
    }
}
