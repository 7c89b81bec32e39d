//! The GPU gates: what the speed work (CUDA graphs, fused AdamW, graphed lanes, the encoder and
//! the neighbour table on CUDA) must not change, each a comparison with its bound: the device
//! against the CPU, or captured steps against eager ones on the device.
//!
//! They need CUDA, so they are ignored by default. `scripts/device-check` runs them first on the
//! lent GPU machine (`integration gpu:: --ignored`, from the device kit), and its dry run
//! (`--cpu`) runs them with `TTTNN_GATE_DEVICE=cpu`: the same code, the CPU standing in for the
//! device (CUDA graphs are refused there, so their gates check the refusal and compare eager with
//! eager). Asked to run without CUDA and without that variable, each fails saying so: a gate never
//! passes by returning early.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tch::Tensor;
use tttnn::embed::{Batching, Encoder, EncoderOptions, Packing};
use tttnn::lm::{LanguageModel, Precision};
use tttnn::store::NeighborTable;
use tttnn::ttt::{CudaGraphs, Dropout, TrainConfig, Trainer};
use tttnn::Device;

use crate::runner::{run_cmd, K3};
use crate::util::{curve, fixtures, ok, tttnn, Fixture};

/// The four fixture families.
const FAMILIES: [&str; 4] = ["tiny-gpt2", "tiny-gptneo", "tiny-llama", "tiny-qwen2"];

/// The device the gates run on: CUDA, or the CPU with `TTTNN_GATE_DEVICE=cpu` (the dry run).
fn device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    *DEVICE.get_or_init(|| match std::env::var("TTTNN_GATE_DEVICE").as_deref() {
        Ok("cpu") => Device::Cpu,
        Ok("cuda") | Err(_) => {
            let out = tttnn().args(["doctor", "--cuda"]).output().unwrap();
            assert!(
                out.status.success(),
                "the GPU gates need CUDA, and `tttnn doctor --cuda` says it is not usable here \
                 (TTTNN_GATE_DEVICE=cpu runs them on the CPU as a dry run):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Device::Cuda
        }
        Ok(other) => panic!("TTTNN_GATE_DEVICE={other}: cpu or cuda"),
    })
}

fn device_name(d: Device) -> &'static str {
    match d {
        Device::Cpu => "cpu",
        Device::Cuda => "cuda",
    }
}

/// The fp32 weights of `model` after a warm-up and four AdamW steps of 32 tokens at lr 2e-5
/// (dropout off, so every device and step path takes the same steps), by HF name.
fn trained(
    model: &Path,
    device: Device,
    precision: Precision,
    graphs: CudaGraphs,
) -> tttnn::Result<BTreeMap<String, Tensor>> {
    let lm = LanguageModel::load(model, device)?;
    let max_length = 32;
    let span = 5000.min(lm.vocab_size - 10);
    let tokens: Vec<i64> = (0..(max_length * 5) as i64)
        .map(|i| (i * 7919) % span + 10)
        .collect();
    let mut trainer = Trainer::new(
        &lm,
        TrainConfig {
            lr: 2e-5,
            max_length,
            precision,
            cuda_graphs: graphs,
            dropout: Dropout::Off,
            ..Default::default()
        },
    )?;
    for chunk in tokens.chunks(max_length) {
        trainer.train_on_tokens(&lm, chunk)?;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trained.safetensors");
    trainer.save_weights(&path)?;
    Ok(Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .collect())
}

/// The largest absolute difference between two sets of weights with the same names.
fn max_abs_diff(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same weights"
    );
    a.iter()
        .map(|(name, x)| {
            let y = &b[name];
            (x.to_kind(tch::Kind::Double) - y.to_kind(tch::Kind::Double))
                .abs()
                .max()
                .double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
#[ignore = "needs CUDA: scripts/device-check runs it"]
fn fused_adamw_on_the_device_trains_the_cpus_weights() {
    let device = device();
    for family in FAMILIES {
        let model = fixtures().join("models").join(family);
        let cpu = trained(&model, Device::Cpu, Precision::Fp32, CudaGraphs::Off).unwrap();
        let there = trained(&model, device, Precision::Fp32, CudaGraphs::Off).unwrap();
        let d = max_abs_diff(&cpu, &there);
        eprintln!(
            "gate adamw {family}: {} vs cpu, max abs diff {d:.3e} (bound 1e-5)",
            device_name(device)
        );
        assert!(
            d <= 1e-5,
            "{family}: weights after AdamW steps differ by {d}"
        );
    }
}

#[test]
#[ignore = "needs CUDA: scripts/device-check runs it"]
fn captured_steps_train_the_eager_steps_weights() {
    let device = device();
    for family in FAMILIES {
        let model = fixtures().join("models").join(family);
        // fp32 to the bound; bf16 to its own (lr 2e-5 moves a weight by ~1e-4 over these
        // steps at most, so 1e-4 still catches a wrong update).
        for (precision, bound) in [(Precision::Fp32, 1e-6), (Precision::Bf16, 1e-4)] {
            let eager = trained(&model, device, precision, CudaGraphs::Off).unwrap();
            if device == Device::Cpu {
                // The dry run: graphs are refused on the CPU, naming the setting.
                let err = trained(&model, device, precision, CudaGraphs::On)
                    .expect_err("CUDA graphs refused on the CPU")
                    .to_string();
                assert!(err.contains("cuda"), "{err}");
                continue;
            }
            let captured = trained(&model, device, precision, CudaGraphs::On).unwrap();
            let d = max_abs_diff(&eager, &captured);
            eprintln!("gate graphs {family} {precision:?}: captured vs eager, max abs diff {d:.3e} (bound {bound:e})");
            assert!(
                d <= bound,
                "{family} {precision:?}: captured steps differ by {d}"
            );
        }
    }
}

#[test]
#[ignore = "needs CUDA: scripts/device-check runs it"]
fn graphed_lanes_record_the_eager_curves() {
    let device = device();
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    // The CPU refuses graphs: there the dry run records eager twice.
    let graphed = if device == Device::Cuda { "on" } else { "off" };
    for adapter in ["full", "lora"] {
        let runs: Vec<BTreeMap<(String, i64), f64>> = ["off", graphed]
            .iter()
            .enumerate()
            .map(|(i, graphs)| {
                let db = dir.path().join(format!("{adapter}-{i}.duckdb"));
                ok(run_cmd(&store, &db, &K3)
                    .args(["--quiet", "--optimizer-state", "reset", "--dropout", "off"])
                    .args(["--lanes", "4", "--adapter", adapter])
                    .args(["--device", device_name(device), "--cuda-graphs", graphs])
                    .output()
                    .unwrap());
                curve(&db, 1)
            })
            .collect();
        assert_eq!(
            runs[0].keys().collect::<Vec<_>>(),
            runs[1].keys().collect::<Vec<_>>()
        );
        let worst = runs[0]
            .iter()
            .map(|(key, a)| (a - runs[1][key]).abs() / a.abs().max(1e-12))
            .fold(0.0, f64::max);
        eprintln!(
            "gate lanes {adapter}: graphs {graphed} vs off, max rel diff {worst:.3e} (bound 1e-5)"
        );
        assert!(
            worst <= 1e-5,
            "{adapter}: graphed lanes' curves differ by {worst}"
        );
    }
}

#[test]
#[ignore = "needs CUDA: scripts/device-check runs it"]
fn bits_per_byte_on_the_device_equal_the_cpus() {
    let device = device();
    let bits_per_byte = |model: &Path, d: Device| -> f64 {
        let out = ok(tttnn()
            .args(["eval", "--json", "--device", device_name(d), "--model"])
            .arg(model)
            .arg(fixtures().join("corpus.jsonl"))
            .output()
            .unwrap());
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["bits_per_byte"].as_f64().unwrap()
    };
    for family in FAMILIES {
        let model = fixtures().join("models").join(family);
        let (cpu, there) = (
            bits_per_byte(&model, Device::Cpu),
            bits_per_byte(&model, device),
        );
        let rel = (there - cpu).abs() / cpu.abs();
        eprintln!(
            "gate bits per byte {family}: {there} vs cpu {cpu}, rel diff {rel:.3e} (bound 1e-5)"
        );
        assert!(rel <= 1e-5, "{family}: {there} against the CPU's {cpu}");
    }
}

/// The first 32 fixture documents embedded by the tiny encoder on `device`.
fn embeddings(device: Device, packing: Packing) -> Vec<Vec<f32>> {
    let corpus = std::fs::read_to_string(fixtures().join("corpus.jsonl")).unwrap();
    let texts: Vec<String> = corpus
        .lines()
        .take(32)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let options = EncoderOptions {
        packing,
        ..Default::default()
    };
    let mut encoder =
        Encoder::load_with(&fixtures().join("encoders/tiny-roberta"), device, options).unwrap();
    encoder.embed(&refs, Batching::rows(8)).unwrap()
}

fn max_abs_diff_rows(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs() as f64))
        .fold(0.0, f64::max)
}

#[test]
#[ignore = "needs CUDA: scripts/device-check runs it"]
fn encoder_embeddings_on_the_device_equal_the_cpus() {
    let device = device();
    let cpu = embeddings(Device::Cpu, Packing::Padded);
    let padded = embeddings(device, Packing::Padded);
    let d = max_abs_diff_rows(&cpu, &padded);
    eprintln!(
        "gate encoder fp32: {} vs cpu, max abs diff {d:.3e} (bound 1e-4)",
        device_name(device)
    );
    assert!(d <= 1e-4, "padded embeddings differ from the CPU's by {d}");
    // The packed graph (CUDA only) embeds what the padded one does.
    if device == Device::Cuda {
        let packed = embeddings(device, Packing::Packed);
        let d = max_abs_diff_rows(&padded, &packed);
        eprintln!("gate encoder packed vs padded: max abs diff {d:.3e} (bound 1e-5)");
        assert!(
            d <= 1e-5,
            "packed embeddings differ from padded ones by {d}"
        );
    }
}

#[test]
#[ignore = "needs CUDA: scripts/device-check runs it"]
fn the_device_neighbour_table_equals_the_cpus() {
    let device = device();
    let dir = tempfile::tempdir().unwrap();
    let store = Fixture::Full.store(dir.path());
    let table = |d: Device| -> PathBuf {
        let out = dir.path().join(format!("neighbors-{}", device_name(d)));
        ok(tttnn()
            .args(["neighbors", "--quiet", "--task", "pile_all", "-k", "5"])
            .args([
                "--val-portion",
                "1.0",
                "--device",
                device_name(d),
                "--store",
            ])
            .arg(&store)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap());
        out
    };
    let load = |path: &Path| NeighborTable::open(path).unwrap().load(1, 5).unwrap();
    let (cpu, there) = (load(&table(Device::Cpu)), load(&table(device)));
    assert_eq!(
        cpu.keys().collect::<std::collections::BTreeSet<_>>(),
        there.keys().collect(),
        "the same documents"
    );
    let mut worst = 0.0f64;
    for (doc, want) in &cpu {
        let got = &there[doc];
        assert_eq!(want.len(), got.len(), "{doc}");
        for (a, b) in want.iter().zip(got) {
            worst = worst.max((a.distance - b.distance).abs() as f64);
            // Ranks may swap only between neighbours the same distance away.
            if a.id != b.id {
                let tied = got
                    .iter()
                    .any(|n| n.id == a.id && (n.distance - a.distance).abs() <= 1e-5);
                assert!(
                    tied,
                    "{doc}: rank {} is {} on the CPU, {} here",
                    a.rank, a.id, b.id
                );
            }
        }
    }
    eprintln!(
        "gate neighbours: {} vs cpu table, max distance diff {worst:.3e} (bound 1e-4)",
        device_name(device)
    );
    assert!(worst <= 1e-4, "distances differ by {worst}");
}
