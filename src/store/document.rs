//! What the store holds per document, and the record of the encoder that embedded them.
use std::collections::HashMap;

use crate::embed::{Packing, Precision};

/// One corpus document as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Stable id.
    pub id: String,
    /// `train`, `validation` or `test`.
    pub split: String,
    /// The Pile set name (`Github`, `FreeLaw`, ...).
    pub set_name: String,
    /// Source file the document came from.
    pub source: String,
    /// 1-based line of the document in its source file.
    pub line: u64,
    /// Full text.
    pub text: String,
    /// Encoder embedding.
    pub embedding: Vec<f32>,
}

/// Where a stored document came from, without its text or embedding.
#[derive(Debug, Clone, PartialEq)]
pub struct DocRef {
    /// Document id.
    pub id: String,
    /// The Pile set name.
    pub set_name: String,
    /// Source file.
    pub source: String,
    /// 1-based line in the source file.
    pub line: u64,
}

/// A stored document's embedding and text.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredText {
    /// Encoder embedding.
    pub embedding: Vec<f32>,
    /// Full text.
    pub text: String,
}

/// How a store's embeddings were computed, kept in the Lance table's config (`tttnn.encoder.*`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EncoderRecord {
    /// Encoder directory.
    pub dir: String,
    /// ONNX Runtime execution provider that ran, e.g. `CUDAExecutionProvider`.
    pub provider: String,
    /// `fp32`, `fp32+tf32` or `fp16`.
    pub precision: String,
    /// ONNX Runtime library version.
    pub ort_version: String,
    /// The graph file that ran: `model.onnx`, `model.fp16.onnx`, `model.packed.onnx`, ...
    pub graph: String,
}

impl EncoderRecord {
    const KEYS: [&'static str; 5] = [
        "tttnn.encoder.dir",
        "tttnn.encoder.provider",
        "tttnn.encoder.precision",
        "tttnn.encoder.ort_version",
        "tttnn.encoder.graph",
    ];

    pub(super) fn entries(&self) -> Vec<(String, String)> {
        let values = [
            &self.dir,
            &self.provider,
            &self.precision,
            &self.ort_version,
            &self.graph,
        ];
        Self::KEYS
            .iter()
            .zip(values)
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    pub(super) fn from_config(config: &HashMap<String, String>) -> Option<Self> {
        let get = |i: usize| config.get(Self::KEYS[i]).cloned();
        Some(Self {
            dir: get(0)?,
            provider: get(1)?,
            precision: get(2)?,
            ort_version: get(3)?,
            // Stores written before the graph was recorded ran the padded graph of their precision.
            graph: get(4).unwrap_or_else(|| {
                let precision = match get(2).as_deref() {
                    Some(p) if p == Precision::Fp16.name() => Precision::Fp16,
                    _ => Precision::Fp32,
                };
                Packing::Padded.graph_file(precision).to_string()
            }),
        })
    }
}
