//! `tttnn ingest` on the corpus layouts researchers have: a Hugging Face dataset directory of
//! Parquet shards, Dolma-style and RedPajama-style JSONL with a set map; each stores exactly what
//! the Pile JSONL of the same documents stores.
use crate::util::{encoder, fails, fixture_documents as documents, ok, tttnn};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, StructArray};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde_json::json;

fn ingest(store: &Path, inputs: &[&Path], extra: &[&str]) -> String {
    ok(tttnn()
        .arg("ingest")
        .args(inputs)
        .arg("--store")
        .arg(store)
        .arg("--encoder")
        .arg(encoder())
        .args(extra)
        .output()
        .unwrap())
}

/// A stored document: text, set name, embedding bits, and its place (file name, line or row).
#[derive(Debug, PartialEq, PartialOrd)]
struct Stored {
    text: String,
    set_name: String,
    embedding: Vec<u32>,
    id: String,
}

/// The store's `split` documents, sorted by text.
fn stored(store: &Path, split: &str) -> Vec<Stored> {
    let s = tttnn::store::Store::open(store).unwrap();
    let mut out: Vec<Stored> = s
        .documents_of(split, None)
        .unwrap()
        .into_iter()
        .map(|d| {
            let doc = s.document(&d.id).unwrap().unwrap();
            Stored {
                text: doc.text,
                set_name: d.set_name,
                embedding: doc.embedding.iter().map(|x| x.to_bits()).collect(),
                id: d.id,
            }
        })
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

/// Everything but where each document came from.
fn contents(docs: &[Stored]) -> Vec<(&str, &str, &[u32])> {
    docs.iter()
        .map(|d| (d.text.as_str(), d.set_name.as_str(), d.embedding.as_slice()))
        .collect()
}

/// Writes `docs` as one Parquet shard the way `datasets` does (`text`, and `meta` a struct with
/// `pile_set_name`), in row groups of `group_rows`.
fn write_shard(path: &Path, docs: &[(String, String)], group_rows: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let sets: StringArray = docs.iter().map(|d| Some(d.1.as_str())).collect();
    let meta = StructArray::from(vec![(
        Arc::new(Field::new("pile_set_name", DataType::Utf8, true)),
        Arc::new(sets) as ArrayRef,
    )]);
    let texts: StringArray = docs.iter().map(|d| Some(d.0.as_str())).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("text", DataType::Utf8, true),
        Field::new("meta", meta.data_type().clone(), true),
    ]));
    let batch =
        RecordBatch::try_new(schema.clone(), vec![Arc::new(texts), Arc::new(meta)]).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group_rows))
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(File::create(path).unwrap(), schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

fn write_jsonl(path: &Path, lines: impl IntoIterator<Item = serde_json::Value>) -> PathBuf {
    let text: String = lines.into_iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

#[test]
fn a_parquet_dataset_directory_stores_what_the_pile_jsonl_stores() {
    let dir = tempfile::tempdir().unwrap();
    let docs = documents();
    let (train, validation) = docs.split_at(70);
    let pile = write_jsonl(
        &dir.path().join("train.jsonl"),
        train
            .iter()
            .map(|(t, s)| json!({"text": t, "meta": {"pile_set_name": s}})),
    );
    let from_jsonl = dir.path().join("jsonl-store");
    ingest(&from_jsonl, &[&pile], &[]);

    // An HF dataset's layout: two train shards, a validation shard, a README.
    let ds = dir.path().join("the-pile-sample");
    write_shard(
        &ds.join("data/train-00000-of-00002.parquet"),
        &train[..40],
        16,
    );
    write_shard(
        &ds.join("data/train-00001-of-00002.parquet"),
        &train[40..],
        16,
    );
    write_shard(
        &ds.join("data/validation-00000-of-00001.parquet"),
        validation,
        16,
    );
    std::fs::write(ds.join("README.md"), "---\nlicense: mit\n---\n").unwrap();
    let from_parquet = dir.path().join("parquet-store");
    // Resumable as JSONL is: a first ingest stops at 23 documents (inside a row group), the same
    // command without the limit completes it, and the rows are those of one uninterrupted ingest.
    ingest(&from_parquet, &[&ds], &["--limit", "23", "--quiet"]);
    assert_eq!(stored(&from_parquet, "train").len(), 23);
    let out = tttnn()
        .arg("ingest")
        .arg(&ds)
        .arg("--store")
        .arg(&from_parquet)
        .arg("--encoder")
        .arg(encoder())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let summary: serde_json::Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(summary["added"], 70 - 23);
    assert!(err.contains("2 of its 3 files, the train split's"), "{err}");
    let jsonl_docs = stored(&from_jsonl, "train");
    let parquet_docs = stored(&from_parquet, "train");
    assert_eq!(contents(&parquet_docs), contents(&jsonl_docs));
    // Ids are FILE_NAME:ROW.
    let first = &train[0].0;
    let d = parquet_docs.iter().find(|d| &d.text == first).unwrap();
    assert_eq!(d.id, "train-00000-of-00002.parquet:1");
    let d = parquet_docs.iter().find(|d| d.text == train[45].0).unwrap();
    assert_eq!(d.id, "train-00001-of-00002.parquet:6");
    // Two shard workers (--shard I/2) store the same rows between them.
    let sharded = dir.path().join("sharded-store");
    for shard in ["0/2", "1/2"] {
        ingest(&sharded, &[&ds], &["--shard", shard, "--quiet"]);
    }
    assert_eq!(stored(&sharded, "train"), parquet_docs);
    // The validation split of the same directory.
    ingest(&from_parquet, &[&ds], &["--split", "validation", "--quiet"]);
    assert_eq!(stored(&from_parquet, "validation").len(), validation.len());
    // A split the directory does not hold is a clear error.
    let err = fails(
        tttnn()
            .arg("ingest")
            .arg(&ds)
            .args(["--split", "test", "--store"])
            .arg(&from_parquet)
            .arg("--encoder")
            .arg(encoder())
            .output()
            .unwrap(),
        1,
    );
    assert!(
        err.contains("holds the splits train, validation but not `test`"),
        "{err}"
    );
}

#[test]
fn dolma_and_redpajama_jsonl_with_a_set_map_store_what_the_pile_jsonl_stores() {
    let dir = tempfile::tempdir().unwrap();
    // A dozen of each set, and the one Pile-CC document.
    let all = documents();
    let docs: Vec<(String, String)> = ["FreeLaw", "Github", "Pile-CC"]
        .iter()
        .flat_map(|set| all.iter().filter(|d| d.1 == *set).take(12).cloned())
        .collect();
    let pile = write_jsonl(
        &dir.path().join("pile.jsonl"),
        docs.iter()
            .map(|(t, s)| json!({"text": t, "meta": {"pile_set_name": s}})),
    );
    let reference = dir.path().join("pile-store");
    ingest(&reference, &[&pile], &["--quiet"]);
    let want = stored(&reference, "train");

    // RedPajama names its sets in `meta.redpajama_set_name`, Dolma in `source`; a set map turns
    // them into the Pile's task names.
    let redpajama_name = |s: &str| format!("RedPajama{}", s.replace('-', ""));
    let redpajama = write_jsonl(
        &dir.path().join("redpajama.jsonl"),
        docs.iter().map(|(t, s)| {
            json!({"text": t, "meta": {"redpajama_set_name": redpajama_name(s), "url": "x"}})
        }),
    );
    let dolma_name = |s: &str| s.to_lowercase();
    let dolma = write_jsonl(
        &dir.path().join("dolma.jsonl"),
        docs.iter().enumerate().map(|(i, (t, s))| {
            json!({"id": i.to_string(), "text": t, "source": dolma_name(s), "added": "2023-03-01"})
        }),
    );
    let map = dir.path().join("sets.toml");
    std::fs::write(
        &map,
        "# corpus set name = task name\nRedPajamaGithub = \"github\"\nRedPajamaFreeLaw = \"freelaw\"\nRedPajamaPileCC = \"pile-cc\"\ngithub = \"github\"\nfreelaw = \"freelaw\"\n\"pile-cc\" = \"pile-cc\"\n",
    )
    .unwrap();
    let map = map.to_str().unwrap();
    for (input, field) in [(&redpajama, "meta.redpajama_set_name"), (&dolma, "source")] {
        let store = dir.path().join(format!("{field}-store"));
        ingest(
            &store,
            &[input],
            &["--set-field", field, "--set-map", map, "--quiet"],
        );
        assert_eq!(
            contents(&stored(&store, "train")),
            contents(&want),
            "{field}"
        );
    }
    // --sets filters by the mapped task name (or the corpus's own name for the set).
    let store = dir.path().join("filtered");
    ingest(
        &store,
        &[&dolma],
        &[
            "--set-field",
            "source",
            "--set-map",
            map,
            "--sets",
            "github",
            "--quiet",
        ],
    );
    let github = stored(&store, "train");
    assert!(!github.is_empty() && github.iter().all(|d| d.set_name == "Github"));
    assert_eq!(
        github.len(),
        docs.iter().filter(|d| d.1 == "Github").count()
    );
    // Without the map the corpus's names are kept as they are.
    let store = dir.path().join("unmapped");
    ingest(&store, &[&dolma], &["--set-field", "source", "--quiet"]);
    assert!(stored(&store, "train")
        .iter()
        .any(|d| d.set_name == "freelaw"));
    // A text field that is not there names the file and the line.
    let err = fails(
        tttnn()
            .arg("ingest")
            .arg(&dolma)
            .args(["--text-field", "content", "--store"])
            .arg(dir.path().join("bad"))
            .arg("--encoder")
            .arg(encoder())
            .output()
            .unwrap(),
        1,
    );
    assert!(
        err.contains("dolma.jsonl:1: missing field `content`"),
        "{err}"
    );
}
