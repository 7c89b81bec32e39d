//! Vector indexes side by side (issues #3, #16, #26): each of `--index-kinds` built in turn on the
//! same store (build time, peak RSS), then searched at every `--nprobes` × `--ef` × `--refine`
//! setting, recall@k against exact search of the same queries.
use std::time::Instant;

use serde_json::{json, Value};
use tttnn::store::{IndexKind, IndexParams, SearchMode, Store};

use crate::{peak_rss_gib, percentile, recall, reset_peak_rss, run, Args, Query};

/// `KIND[:partitions=P][:sub_vectors=S][:bits=B]`, the rest of `args`' or tttnn index's defaults.
fn parse(spec: &str, args: &Args, rows: usize, dim: usize) -> anyhow::Result<IndexParams> {
    let mut parts = spec.split(':');
    let kind = match parts.next().unwrap_or_default() {
        "ivf-pq" => IndexKind::IvfPq,
        "ivf-rq" => IndexKind::IvfRq,
        "ivf-hnsw-sq" => IndexKind::IvfHnswSq,
        other => anyhow::bail!("--index-kinds: unknown kind {other}"),
    };
    let (mut partitions, mut sub_vectors, mut bits) = (args.partitions, args.sub_vectors, None);
    for p in parts {
        let (key, value) = p
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--index-kinds {spec}: want key=value, not {p}"))?;
        let value: u32 = value.parse()?;
        match key {
            "partitions" => partitions = Some(value),
            "sub_vectors" => sub_vectors = Some(value),
            "bits" => bits = Some(value),
            _ => anyhow::bail!("--index-kinds {spec}: unknown key {key}"),
        }
    }
    Ok(IndexParams::resolve(
        kind,
        rows,
        dim,
        partitions,
        sub_vectors,
        bits,
    )?)
}

/// Builds and searches every index of `--index-kinds`; `record` takes each measured row.
pub fn measure(
    args: &Args,
    store: &Store,
    queries: &[Query],
    truth: &[Vec<String>],
    exact_p50: f64,
    record: &mut dyn FnMut(Value),
) -> anyhow::Result<()> {
    let (rows, dim, k) = (store.count()?, store.dim(), args.k);
    let specs = args
        .index_kinds
        .iter()
        .map(|s| parse(s, args, rows, dim))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // One kind and an index already there: search it as it is (a rerun of the same settings).
    let reuse = specs.len() == 1 && !args.rebuild_index && !store.vector_indexes()?.is_empty();
    for p in specs {
        let name = p.kind.name();
        let sub_vectors = p.pq_sub_vectors();
        if reuse {
            eprintln!("searching the store's existing index as {name}");
        } else {
            reset_peak_rss();
            let t = Instant::now();
            store.create_index(p)?;
            let (build_s, rss) = (t.elapsed().as_secs_f64(), peak_rss_gib());
            let assignment = tttnn::store::partition_assignment();
            eprintln!(
                "{name} index: {} partitions, {}, rows assigned {assignment}ly, built in {build_s:.1} s, peak RSS {rss:.2} GiB",
                p.partitions, p.codes(),
            );
            record(
                json!({"method": format!("{name} build"), "partitions": p.partitions,
                "sub_vectors": sub_vectors, "bits": p.bits, "assignment": assignment,
                "build_s": build_s, "peak_rss_gib": rss}),
            );
        }
        reset_peak_rss();
        let efs: Vec<Option<usize>> = match p.kind {
            IndexKind::IvfHnswSq => args.ef.iter().copied().map(Some).collect(),
            _ => vec![None],
        };
        for &nprobes in &args.nprobes {
            for &ef in &efs {
                for &refine in &args.refine {
                    let mode = SearchMode::new(Some(nprobes), refine, ef);
                    // An ef below the candidates the search asks for is the store's setting error
                    // (Store::retrieve checks it); the sweep goes on without that setting.
                    let (mut ms, found) = match run(store, queries, k, mode) {
                        Err(e) if is_ef_error(&e) => {
                            eprintln!("skipping ef {ef:?} with refine {refine}: {e}");
                            continue;
                        }
                        r => r?,
                    };
                    let recall = recall(&found, truth);
                    let a = percentile(&mut ms, 0.5);
                    let b = percentile(&mut ms, 0.99);
                    record(json!({"method": name, "queries": queries.len(),
                        "partitions": p.partitions, "sub_vectors": sub_vectors, "bits": p.bits,
                        "nprobes": nprobes, "ef": ef, "refine": refine, "p50_ms": a, "p99_ms": b,
                        "recall_at_k": recall, "speedup_vs_per_query": exact_p50 / a}));
                    let dash = |x: String| if x == "0" { "-".to_string() } else { x };
                    println!(
                        "| {rows} | {dim} | {name} ({} partitions, {} bits) | {nprobes} | {} | {} | {a:.2} | {b:.2} | {recall:.3} | {:.1}x |",
                        p.partitions,
                        p.bits,
                        ef.map_or("-".into(), |e| e.to_string()),
                        dash(refine.to_string()),
                        exact_p50 / a
                    );
                }
            }
        }
        eprintln!("peak RSS while searching {name}: {:.2} GiB", peak_rss_gib());
    }
    Ok(())
}

/// Whether `e` is the store's refusal of an HNSW `ef` setting.
fn is_ef_error(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<tttnn::Error>(), Some(tttnn::Error::BadSetting { field, .. }) if field == "ef")
}
