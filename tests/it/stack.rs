//! The native stack works on this machine: each of lancedb + arrow, duckdb, ort, tch and
//! tokenizers does real work and matches the Python reference where one exists.
use crate::util::*;
use tch::Tensor;
use tttnn::embed::Encoder;
use tttnn::records::{Db, MIGRATIONS};
use tttnn::store::{
    DatastoreFraction, Document, IndexKind, IndexParams, Retrieval, SearchMode, Store,
};
use tttnn::Device;

#[test]
fn golden_files_load() {
    let g = golden();
    assert_eq!(g.texts.len(), g.lm_token_ids.len());
    for name in ["tiny-gpt2", "tiny-gptneo", "tiny-llama", "tiny-qwen2"] {
        let lm = &g.lms[name];
        assert_eq!(lm.loglik.len(), g.texts.len());
        let t = golden_tensors(name);
        assert_eq!(t["logits"].size()[0] as usize, lm.logits_input_ids.len());
        assert!(t.keys().any(|k| k.starts_with("trained.")));
    }
    assert_eq!(
        golden_tensors("tiny-roberta")["embeddings"].size(),
        vec![g.texts.len() as i64, g.encoder.dim as i64]
    );
}

#[test]
fn every_lancedb_index_kind_finds_each_vector_itself() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 16;
    // 512 vectors in 8 clusters: deterministic, PQ has enough rows to train 8-bit codebooks.
    let docs: Vec<Document> = (0..512u64)
        .map(|i| Document {
            id: format!("d{i}"),
            split: "train".into(),
            set_name: format!("set{}", i % 8),
            source: "synthetic".into(),
            line: i + 1,
            text: format!("document {i}"),
            embedding: (0..dim)
                .map(|j| ((i % 8) * 10) as f32 + ((i * 31 + j as u64 * 17) % 97) as f32 / 97.0)
                .collect(),
        })
        .collect();
    let store = Store::open_or_create(dir.path(), dim).unwrap();
    store.add(&docs).unwrap();
    assert_eq!(store.count().unwrap(), 512);
    // RaBitQ's and HNSW's construction is randomised and their codes of 16-d vectors are coarse:
    // they re-rank every row of a partition (2 clusters, 128 rows), so the test is of the index
    // kind working end to end, not of their recall (docs/benchmarks.md measures that).
    for (kind, bits, ef, refine) in [
        (IndexKind::IvfPq, 8, None, 10),
        (IndexKind::IvfPq, 4, None, 10),
        (IndexKind::IvfRq, 4, None, 26),
        (IndexKind::IvfHnswSq, 8, Some(150), 26),
    ] {
        store
            .create_index(IndexParams {
                kind,
                partitions: 4,
                sub_vectors: 4,
                bits,
            })
            .unwrap();
        assert_eq!(
            store.vector_indexes().unwrap().len(),
            1,
            "{kind:?} replaced the last"
        );
        for d in docs.iter().step_by(37) {
            let exact = store
                .retrieve(&d.embedding, &search(5, SearchMode::Exact, None))
                .unwrap();
            assert_eq!(exact[0].id, d.id);
            assert!(exact[0].distance < 1e-3);
            assert!(exact.windows(2).all(|w| w[0].distance <= w[1].distance));
            let mode = SearchMode::new(Some(4), refine, ef);
            let indexed = store
                .retrieve(&d.embedding, &search(5, mode, None))
                .unwrap();
            assert_eq!(indexed[0].id, d.id, "{kind:?}, {bits} bits");
            assert_eq!(indexed[0].text, d.text);
        }
    }
    // Reopening finds the same table and dimension.
    let reopened = Store::open(dir.path()).unwrap();
    assert_eq!(reopened.dim(), dim);
}

#[test]
fn split_search_returns_the_nearest_of_that_split() {
    // Points on a line, 1.0 apart: d0..d199, every third one a test document. Near 0 the test
    // documents are rare; from 150 on every point is a test document, so the 2k nearest of all
    // hold fewer than k training documents and the search must filter before it.
    let dir = tempfile::tempdir().unwrap();
    let split = |i: u64| {
        if i.is_multiple_of(3) || i >= 150 {
            "test"
        } else {
            "train"
        }
    };
    let docs: Vec<Document> = (0..200u64)
        .map(|i| Document {
            id: format!("d{i}"),
            split: split(i).into(),
            set_name: "s".into(),
            source: "synthetic".into(),
            line: i + 1,
            text: String::new(),
            embedding: vec![i as f32, 0.0, 0.0, 0.0],
        })
        .collect();
    let store = Store::open_or_create(dir.path(), 4).unwrap();
    store.add(&docs).unwrap();
    for (q, k) in [(0.2f32, 5), (60.4, 10), (199.0, 8)] {
        let got: Vec<String> = store
            .retrieve(
                &[q, 0.0, 0.0, 0.0],
                &search(k, SearchMode::Exact, Some("train")),
            )
            .unwrap()
            .into_iter()
            .map(|n| n.id)
            .collect();
        let mut want: Vec<&Document> = docs.iter().filter(|d| d.split == "train").collect();
        want.sort_by(|a, b| {
            (a.embedding[0] - q)
                .abs()
                .total_cmp(&(b.embedding[0] - q).abs())
        });
        let want: Vec<String> = want[..k].iter().map(|d| d.id.clone()).collect();
        assert_eq!(got, want, "query {q}");
    }
}

#[test]
fn inner_product_pool_is_activefts_largest_absolute_inner_products() {
    // Random 8-d vectors, some anti-correlated with the query: activeft's pool (the largest
    // |<x, q>| of an IP search for q and for -q) holds them; the L2 pool does not.
    let dir = tempfile::tempdir().unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 2001) as f32 / 1000.0 - 1.0
    };
    let docs: Vec<Document> = (0..300u64)
        .map(|i| Document {
            id: format!("d{i}"),
            split: if i % 10 == 0 { "test" } else { "train" }.into(),
            set_name: "s".into(),
            source: "synthetic".into(),
            line: i + 1,
            text: String::new(),
            embedding: (0..8).map(|_| next()).collect(),
        })
        .collect();
    let store = Store::open_or_create(dir.path(), 8).unwrap();
    store.add(&docs).unwrap();
    let q: Vec<f32> = (0..8).map(|_| next()).collect();
    let ip = |d: &Document| -> f64 {
        d.embedding
            .iter()
            .zip(&q)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    };
    let k = 25;
    let got: Vec<String> = store
        .retrieve_by_inner_product(&q, &search(k, SearchMode::Exact, Some("train")))
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    let mut want: Vec<&Document> = docs.iter().filter(|d| d.split == "train").collect();
    want.sort_by(|a, b| ip(b).abs().total_cmp(&ip(a).abs()));
    let want: Vec<String> = want[..k].iter().map(|d| d.id.clone()).collect();
    assert_eq!(got, want);
    let negative = want
        .iter()
        .filter(|id| ip(docs.iter().find(|d| &&d.id == id).unwrap()) < 0.0)
        .count();
    assert!(negative > 0, "the pool holds anti-correlated documents");
}

#[test]
fn duckdb_migrates_appends_and_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.duckdb");
    {
        let db = Db::open(&path).unwrap();
        let all: Vec<String> = MIGRATIONS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(db.applied_migrations().unwrap(), all);
        drop(db);
        let c = duckdb::Connection::open(&path).unwrap();
        let id: i64 = c
            .query_row("INSERT INTO runs (method, status, config, tttnn_version) VALUES ('ttt-nn', 'running', '{}', '0') RETURNING id", [], |r| r.get(0))
            .unwrap();
        c.execute_batch("BEGIN TRANSACTION").unwrap();
        {
            let mut app = c.appender("curve").unwrap();
            // More than one 2,048-row vector: appends have misbehaved past that (duckdb-rs#503).
            for i in 0..5000i64 {
                app.append_row(duckdb::params![
                    id,
                    format!("doc{}", i / 50),
                    i % 50,
                    -(i as f64),
                    i64::from(i % 50 > 0)
                ])
                .unwrap();
            }
        }
        c.execute_batch("COMMIT").unwrap();
        let (n, s): (i64, f64) = c
            .query_row(
                "SELECT count(*), sum(loglik) FROM curve WHERE run_id = ?",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(n, 5000);
        assert_eq!(s, -(4999.0 * 5000.0 / 2.0));
    }
    // Reopening applies nothing twice and keeps the data; a read-only handle sees it too.
    let db = Db::open(&path).unwrap();
    assert_eq!(db.applied_migrations().unwrap().len(), MIGRATIONS.len());
    drop(db);
    let ro = crate::util::conn(&path);
    let n: i64 = ro
        .query_row("SELECT count(*) FROM curve", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5000);
}

#[test]
fn ort_encoder_matches_pytorch() {
    let g = golden();
    let mut enc = Encoder::load(&fixtures().join("encoders/tiny-roberta"), Device::Cpu).unwrap();
    assert_eq!(enc.dim(), g.encoder.dim);
    assert_eq!(enc.max_length(), g.encoder.max_length);
    assert_eq!(enc.provider(), "CPUExecutionProvider");
    for (text, ids) in g.texts.iter().zip(&g.encoder.token_ids) {
        assert_eq!(
            &enc.token_ids(text).unwrap(),
            ids,
            "encoder token ids of {text:?}"
        );
    }
    // A long text is tokenized from a prefix; its ids must equal the full text's, truncated.
    let long: String = g.texts[..3].join("\n\n").repeat(30);
    let mut tok =
        tokenizers::Tokenizer::from_file(fixtures().join("encoders/tiny-roberta/tokenizer.json"))
            .unwrap();
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length: g.encoder.max_length,
        ..Default::default()
    }))
    .unwrap();
    assert!(long.len() > 64 * g.encoder.max_length);
    // Prefixes grow from 8 to 64 bytes per token, then the whole text: one text settled by each.
    let word = "y".repeat(20 * g.encoder.max_length);
    let late_space = format!("x {word} {long}");
    let no_space = format!("x {word}{word}{word}{word}");
    for text in [&long, &late_space, &no_space] {
        assert_eq!(
            enc.token_ids(text).unwrap(),
            tok.encode(text.as_str(), true).unwrap().get_ids(),
            "ids of a {}-byte text",
            text.len()
        );
    }
    // Many texts go through the tokenizer in chunks; each keeps its place.
    let many: Vec<&str> = (0..600)
        .map(|i| g.texts[i % g.texts.len()].as_str())
        .collect();
    let ids = enc.token_ids_batch(&many).unwrap();
    for (text, got) in many.iter().zip(&ids) {
        assert_eq!(got, &enc.token_ids(text).unwrap());
    }
    let texts: Vec<&str> = g.texts.iter().map(|s| s.as_str()).collect();
    // Batch of 2: batches are formed by length, so this also checks the output order.
    let got = enc.embed(&texts, tttnn::embed::Batching::rows(2)).unwrap();
    let want = &golden_tensors("tiny-roberta")["embeddings"];
    for (i, v) in got.iter().enumerate() {
        let d = max_abs_diff(&Tensor::from_slice(v), &want.get(i as i64));
        assert!(d < 1e-5, "embedding {i} differs by {d}");
    }
}

#[test]
fn a_graph_that_pools_itself_gives_the_same_embeddings() {
    // tiny-roberta-pooled is tiny-roberta's graph with the masked mean appended (output
    // `embedding`, as `scripts/export_encoder.py --pool` writes): tttnn takes its output as is.
    let g = golden();
    let texts: Vec<&str> = g.texts.iter().map(|s| s.as_str()).collect();
    let mut plain = Encoder::load(&fixtures().join("encoders/tiny-roberta"), Device::Cpu).unwrap();
    let mut pooled = Encoder::load(
        &fixtures().join("encoders/tiny-roberta-pooled"),
        Device::Cpu,
    )
    .unwrap();
    let (a, b) = (
        plain
            .embed(&texts, tttnn::embed::Batching::rows(2))
            .unwrap(),
        pooled
            .embed(&texts, tttnn::embed::Batching::rows(2))
            .unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.len(), y.len());
        let d = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-6, "embedding {i} differs by {d}");
    }
}

#[test]
fn tokenizers_match_python() {
    let g = golden();
    let tok = tokenizers::Tokenizer::from_file(fixtures().join("models/tiny-gpt2/tokenizer.json"))
        .unwrap();
    for (text, ids) in g.texts.iter().zip(&g.lm_token_ids) {
        let enc = tok.encode(text.as_str(), false).unwrap();
        let got: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        assert_eq!(&got, ids, "token ids of {text:?}");
        assert_eq!(&tok.decode(enc.get_ids(), false).unwrap(), text);
    }
}

/// The `k` nearest (of `split`, if given) with no other filter.
fn search(k: usize, mode: SearchMode, split: Option<&str>) -> Retrieval {
    Retrieval {
        k,
        mode,
        max_distance: None,
        exclude_id: None,
        split: split.map(String::from),
        datastore: DatastoreFraction::WHOLE,
    }
}
