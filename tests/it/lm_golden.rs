//! Each LM family equals HF transformers on the committed fixtures: logits, per-document
//! log-likelihood over lm-eval's rolling windows (texts longer than n_ctx included), and the
//! weights after 3 AdamW steps.
use crate::util::*;
use tch::Tensor;
use tttnn::lm::LanguageModel;
use tttnn::ttt::{TrainConfig, Trainer};
use tttnn::Device;

fn check(name: &str) {
    let g = golden();
    let want = golden_tensors(name);
    let gl = &g.lms[name];
    let lm = crate::util::load_lm(&fixtures().join("models").join(name));
    assert_eq!(lm.n_ctx, g.n_ctx);
    assert_eq!(lm.eot_id, g.eot_id);
    let ids = Tensor::from_slice(&gl.logits_input_ids).unsqueeze(0);
    let logits = tch::no_grad(|| lm.forward(&ids, false))
        .unwrap()
        .squeeze_dim(0);
    let d = max_abs_diff(&logits, &want["logits"]);
    assert!(d < 1e-4, "{name}: logits differ by {d}");
    assert!(
        g.lm_token_ids.iter().any(|t| t.len() > g.n_ctx),
        "a golden text must span several windows"
    );
    for (i, text) in g.texts.iter().enumerate() {
        let s = tttnn::eval::loglikelihood(&lm, text).unwrap();
        assert_eq!(s.bytes, gl.bytes[i]);
        let tol = 1e-5 * gl.loglik[i].abs().max(1.0);
        assert!(
            (s.loglik - gl.loglik[i]).abs() <= tol,
            "{name} doc {i}: {} vs {}",
            s.loglik,
            gl.loglik[i]
        );
    }
    let t = &gl.train;
    let mut trainer = Trainer::new(
        &lm,
        TrainConfig {
            lr: t.lr,
            max_length: t.max_length,
            ..Default::default()
        },
    )
    .unwrap();
    let tokens = &g.lm_token_ids[t.text_index][..t.max_length * t.steps];
    let r = trainer.train_on_tokens(&lm, tokens).unwrap();
    assert_eq!(r.steps, t.steps);
    let mean: f64 = t.losses.iter().sum::<f64>() / t.losses.len() as f64;
    assert!(
        (r.mean_loss - mean).abs() < 1e-5,
        "{name}: mean loss {} vs {mean}",
        r.mean_loss
    );
    for (var_name, var) in lm.var_store().variables() {
        let d = max_abs_diff(&var, &want[&format!("trained.{var_name}")]);
        assert!(
            d < 1e-5,
            "{name}: {var_name} differs by {d} after 3 AdamW steps"
        );
    }
    // The in-place reset restores the pretrained weights exactly.
    trainer.reset_weights();
    let again = tch::no_grad(|| lm.forward(&ids, false))
        .unwrap()
        .squeeze_dim(0);
    assert_eq!(max_abs_diff(&again, &logits), 0.0);
}

#[test]
fn gpt2_matches_transformers() {
    check("tiny-gpt2");
}

#[test]
fn gpt_neo_matches_transformers() {
    check("tiny-gptneo");
}

#[test]
fn llama_matches_transformers() {
    check("tiny-llama");
}

#[test]
fn qwen2_matches_transformers() {
    check("tiny-qwen2");
}

#[test]
fn unsupported_model_type_lists_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    std::fs::copy(
        fixtures().join("models/tiny-gpt2/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let e = LanguageModel::load(dir.path(), Device::Cpu).err().unwrap();
    assert_eq!(e.exit_code(), 1);
    assert!(
        e.to_string().contains(
            "model_type `mamba` is not supported (supported: gpt2, gpt_neo, llama, qwen2)"
        ),
        "{e}"
    );
}

/// Deep copies of the model's weights.
fn weights(lm: &LanguageModel) -> Vec<Tensor> {
    lm.var_store()
        .trainable_variables()
        .iter()
        .map(|t| t.copy())
        .collect()
}

/// The tiny GPT-2 with an AdamW trainer (lr 1e-3, chunks of 24 tokens).
fn tiny_gpt2_with_trainer() -> (LanguageModel, Trainer) {
    let lm = crate::util::load_lm(&fixtures().join("models/tiny-gpt2"));
    let trainer = Trainer::new(
        &lm,
        TrainConfig {
            lr: 1e-3,
            max_length: 24,
            ..Default::default()
        },
    )
    .unwrap();
    (lm, trainer)
}

#[test]
fn one_token_chunks_take_a_zero_gradient_step_or_are_skipped() {
    use tttnn::ttt::ShortChunks;
    let g = golden();
    let tokens = &g.lm_token_ids[0][..25];
    let trained = |short_chunks: ShortChunks| {
        let lm = crate::util::load_lm(&model());
        let config = TrainConfig {
            lr: 1e-3,
            max_length: 24,
            short_chunks,
            ..Default::default()
        };
        let mut trainer = Trainer::new(&lm, config).unwrap();
        let r = trainer.train_on_tokens(&lm, tokens).unwrap();
        (r, weights(&lm))
    };
    // The original: the 1-token chunk's empty loss has zero gradients and AdamW still steps.
    let (stepped, after_step) = trained(ShortChunks::Step);
    assert_eq!(
        (
            stepped.tokens,
            stepped.chunks,
            stepped.steps,
            stepped.zero_grad_steps,
            stepped.skipped_short,
            stepped.skipped_nonfinite
        ),
        (25, 2, 2, 1, 0, 0)
    );
    assert!(stepped.mean_loss.is_finite());
    let (skipped, after_skip) = trained(ShortChunks::Skip);
    assert_eq!((skipped.steps, skipped.skipped_short), (1, 1));
    assert_eq!(skipped.mean_loss, stepped.mean_loss);
    // The zero-gradient step still moves the weights (decay, and the momentum of step 1).
    let moved = after_step
        .iter()
        .zip(&after_skip)
        .map(|(a, b)| max_abs_diff(a, b))
        .fold(0.0, f64::max);
    assert!(moved > 1e-6, "{moved}");
}

#[test]
fn optimizer_state_is_carried_or_reset_between_documents() {
    use tttnn::ttt::OptimizerState;
    let g = golden();
    let tokens = &g.lm_token_ids[0][..48];
    let after_one_document = |policy: OptimizerState| -> Vec<Tensor> {
        let (lm, mut trainer) = tiny_gpt2_with_trainer();
        trainer.train_on_tokens(&lm, tokens).unwrap();
        let first = weights(&lm);
        trainer.finish_document(policy);
        trainer.train_on_tokens(&lm, tokens).unwrap();
        let second = weights(&lm);
        first
            .iter()
            .zip(&second)
            .map(|(a, b)| (a - b).abs().max())
            .collect()
    };
    // Reset: the second document starts from the same weights and a fresh AdamW, so ends the same.
    assert!(after_one_document(OptimizerState::Reset)
        .iter()
        .all(|d| d.double_value(&[]) == 0.0));
    // Carry (the original): AdamW's moments and step count carry over, so it does not.
    assert!(after_one_document(OptimizerState::Carry)
        .iter()
        .any(|d| d.double_value(&[]) > 0.0));
}

#[test]
fn bf16_stays_close_to_fp32() {
    use tttnn::lm::Precision;
    let g = golden();
    let text = &g.texts[0];
    let mut lm = crate::util::load_lm(&fixtures().join("models/tiny-llama"));
    let fp32 = tttnn::eval::loglikelihood(&lm, text).unwrap().loglik;
    lm.set_precision(Precision::Bf16).unwrap();
    let bf16 = tttnn::eval::loglikelihood(&lm, text).unwrap().loglik;
    assert_ne!(fp32, bf16);
    assert!((fp32 - bf16).abs() / fp32.abs() < 0.02, "{fp32} vs {bf16}");
}
