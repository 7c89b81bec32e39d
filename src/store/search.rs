//! Nearest-neighbour retrieval: [`Store::retrieve`] is the one search entry point (exact, or an
//! IVF index (RaBitQ, PQ or HNSW-SQ) with exact re-ranking), with the split, exclusion and distance filters the
//! original applies.
use std::collections::HashMap;

use arrow_array::RecordBatch;
use futures::TryStreamExt;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use lancedb::DistanceType;

use super::arrow::{embedding_at, embedding_column, f32_column, sql_str, string_column};
use super::datastore::DatastoreFraction;
use super::neighbor_table::TableNeighbor;
use super::Store;
use crate::error::{Error, Result};

/// Partitions an indexed search probes unless told otherwise. At 10M x 384 with the default index
/// (IVF-RQ, 1 bit, 3,162 partitions) 80 probes gave recall@50 0.984 against exact search at 14.4 ms
/// p50, 40 too few for 0.98 (docs/benchmarks.md, "IVF-RQ at 10M").
pub const DEFAULT_NPROBES: usize = 80;

/// Re-ranking an indexed search does unless told otherwise: `refine_factor`·k candidates by exact
/// distance. With it IVF-PQ kept recall@50 ≥ 0.99 against exact search on real MiniLM embeddings
/// and on 1M synthetic 1024-d vectors, and IVF-RQ 0.984 at 10M (docs/benchmarks.md); without
/// re-ranking PQ was at 0.58–0.73, and distances would be the codes' approximations.
pub const DEFAULT_REFINE_FACTOR: u32 = 5;

/// A retrieved neighbour, nearest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbor {
    /// Document id.
    pub id: String,
    /// The Pile set name.
    pub set_name: String,
    /// Unsquared L2 distance to the query, as the original's distance filter uses.
    pub distance: f32,
    /// Full text.
    pub text: String,
    /// Stored embedding (SIFT selects on it).
    pub embedding: Vec<f32>,
}

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SearchMode {
    /// Brute-force L2 over every vector (the paper's `IndexFlatL2`).
    Exact,
    /// The vector index, probing `nprobes` partitions and re-ranking `refine_factor`·k candidates
    /// exactly; an HNSW index visits `ef` candidates per partition (Lance's default when `None`).
    Indexed {
        nprobes: usize,
        refine_factor: Option<u32>,
        ef: Option<usize>,
    },
}

impl SearchMode {
    /// Exact search without `nprobes`; otherwise the index, re-ranking unless `refine_factor` is 0.
    pub fn new(nprobes: Option<usize>, refine_factor: u32, ef: Option<usize>) -> Self {
        match nprobes {
            None => SearchMode::Exact,
            Some(nprobes) => SearchMode::Indexed {
                nprobes,
                refine_factor: (refine_factor > 0).then_some(refine_factor),
                ef,
            },
        }
    }
}

/// What to retrieve: the original's settings plus tttnn's options.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrieval {
    /// Neighbours wanted.
    pub k: usize,
    /// Exact or indexed search.
    pub mode: SearchMode,
    /// Drop neighbours farther than this (unsquared L2; the original's `distance_threshold`, 4.0).
    pub max_distance: Option<f32>,
    /// Leave this document out (the query document itself when it is in the store).
    pub exclude_id: Option<String>,
    /// Search only documents of this split (the original indexes only the training set).
    pub split: Option<String>,
    /// Search only this part of the store (`--datastore-fraction`; the whole store by default).
    pub datastore: DatastoreFraction,
}

impl Retrieval {
    /// What the search results `out` (in order) give under these settings: `exclude_id` left
    /// out, at most `max_distance` away, at most `k`.
    fn keep(&self, mut out: Vec<Neighbor>) -> Vec<Neighbor> {
        if let Some(id) = &self.exclude_id {
            out.retain(|n| &n.id != id);
        }
        if let Some(d) = self.max_distance {
            out.retain(|n| n.distance <= d);
        }
        out.truncate(self.k);
        out
    }
}

/// When a filter applies: before the nearest-neighbour search, or to its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Before,
    After,
}

/// Lance's HNSW search returns at most `ef` candidates and refuses an `ef` below what it is asked
/// for: `limit` results, times `refine_factor` when they are re-ranked (`limit` is k, plus one when
/// the query document is left out). Checked here so the error names the setting.
fn check_ef(ef: usize, limit: usize, refine_factor: Option<u32>) -> Result<()> {
    let wanted = limit * refine_factor.map_or(1, |r| r as usize);
    if ef < wanted {
        return Err(Error::setting(
            "ef",
            format!(
                "{ef} is below the {wanted} candidates an HNSW search is asked for here \
                 ({limit} results{}): give --ef {wanted} or more",
                refine_factor.map_or(String::new(), |r| format!(" x refine_factor {r}"))
            ),
        ));
    }
    Ok(())
}

impl Store {
    /// The search a user gets by default: the index when the store has one (probing `nprobes`,
    /// re-ranking `refine_factor`·k), exact search when it has none or `exact` is asked for.
    pub fn default_search_mode(
        &self,
        exact: bool,
        nprobes: usize,
        refine_factor: u32,
        ef: Option<usize>,
    ) -> Result<SearchMode> {
        let indexed = !exact && !self.vector_indexes()?.is_empty();
        Ok(SearchMode::new(
            indexed.then_some(nprobes),
            refine_factor,
            ef,
        ))
    }

    /// The neighbours of `vector` under `r`: nearest first, `exclude_id` left out, at most
    /// `max_distance` away, at most `k` of them.
    pub fn retrieve(&self, vector: &[f32], r: &Retrieval) -> Result<Vec<Neighbor>> {
        self.check_dim(vector)?;
        super::count_queries(1);
        let extra = usize::from(r.exclude_id.is_some());
        let out = self.nearest_in(
            vector,
            r.k + extra,
            r.mode,
            r.split.as_deref(),
            &r.datastore,
        )?;
        Ok(r.keep(out))
    }

    fn check_dim(&self, vector: &[f32]) -> Result<()> {
        if vector.len() != self.dim() {
            return Err(Error::internal(format!(
                "query vector is {}-d, store is {}-d",
                vector.len(),
                self.dim()
            )));
        }
        Ok(())
    }

    /// The `k` nearest documents to `vector` among the documents of one split (all if `None`) that
    /// `datastore` keeps.
    ///
    /// Lance evaluates a filter applied before the search by scanning the `split` column of every
    /// row, which at 1M rows made an IVF-PQ query 8x slower (docs/benchmarks.md). The split is
    /// therefore first applied to the 2k nearest of all documents; only when fewer than k of them
    /// are in the split is the search repeated with the filter first. For exact search both give
    /// the same neighbours: the k nearest of the split are among the 2k nearest of all. A datastore
    /// fraction filters first: most of the 2k nearest of all would fall outside it.
    fn nearest_in(
        &self,
        vector: &[f32],
        k: usize,
        mode: SearchMode,
        split: Option<&str>,
        datastore: &DatastoreFraction,
    ) -> Result<Vec<Neighbor>> {
        let l2 = DistanceType::L2;
        let filters: Vec<String> = split
            .map(|s| format!("split = {}", sql_str(s)))
            .into_iter()
            .chain(datastore.filter())
            .collect();
        if filters.is_empty() {
            return self.search(vector, k, mode, l2, None);
        }
        let filter = filters.join(" AND ");
        if !datastore.is_whole() {
            return self.search(vector, k, mode, l2, Some((&filter, Filter::Before)));
        }
        let mut out = self.search(vector, 2 * k, mode, l2, Some((&filter, Filter::After)))?;
        if out.len() < k {
            out = self.search(vector, k, mode, l2, Some((&filter, Filter::Before)))?;
        }
        out.truncate(k);
        Ok(out)
    }

    /// activeft's SIFT candidate pool: the `r.k` documents with the largest |⟨x, q⟩|, from an
    /// inner-product search for `vector` and one for its negation (activeft `sift.py` queries an
    /// IP index with q and −q). Exact search: the store's IVF-PQ index is built for L2. Each
    /// neighbour keeps its unsquared L2 distance, which `r.max_distance` filters on.
    pub fn retrieve_by_inner_product(
        &self,
        vector: &[f32],
        r: &Retrieval,
    ) -> Result<Vec<Neighbor>> {
        self.check_dim(vector)?;
        super::count_queries(1);
        let extra = usize::from(r.exclude_id.is_some());
        let filters: Vec<String> = r
            .split
            .as_deref()
            .map(|s| format!("split = {}", sql_str(s)))
            .into_iter()
            .chain(r.datastore.filter())
            .collect();
        let filter = (!filters.is_empty()).then(|| filters.join(" AND "));
        let filter = filter.as_deref().map(|f| (f, Filter::Before));
        let negated: Vec<f32> = vector.iter().map(|x| -x).collect();
        let mut out = Vec::new();
        for q in [vector, &negated[..]] {
            out.extend(self.search(
                q,
                r.k + extra,
                SearchMode::Exact,
                DistanceType::Dot,
                filter,
            )?);
        }
        // |<x, q>| once per candidate, then ranked (ties by id, so q's and -q's copies meet).
        let mut ranked: Vec<(f64, Neighbor)> = out
            .into_iter()
            .map(|n| {
                let ip: f64 = n
                    .embedding
                    .iter()
                    .zip(vector)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                (ip.abs(), n)
            })
            .collect();
        ranked.sort_by(|(a, x), (b, y)| b.total_cmp(a).then(x.id.cmp(&y.id)));
        ranked.dedup_by(|(_, x), (_, y)| x.id == y.id);
        Ok(r.keep(ranked.into_iter().map(|(_, n)| n).collect()))
    }

    /// The documents a neighbour table lists, in its order, with their texts and embeddings
    /// read in one scan (what `tttnn run --neighbors-from` trains on, without searching).
    pub fn neighbors_by_id(&self, listed: &[TableNeighbor]) -> Result<Vec<Neighbor>> {
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = listed.iter().map(|n| sql_str(&n.id)).collect();
        let batches = self.scan(
            Some(format!("id IN ({})", ids.join(", "))),
            &["id", "set_name", "text", "embedding"],
            None,
        )?;
        let mut found: HashMap<String, (String, String, Vec<f32>)> = HashMap::new();
        for b in &batches {
            let embeddings = embedding_column(&self.path, b)?;
            let rows = string_column(&self.path, b, "id")?
                .into_iter()
                .zip(string_column(&self.path, b, "set_name")?)
                .zip(string_column(&self.path, b, "text")?);
            for (i, ((id, set_name), text)) in rows.enumerate() {
                found.insert(
                    id,
                    (set_name, text, embedding_at(&self.path, embeddings, i)?),
                );
            }
        }
        listed
            .iter()
            .map(|n| {
                let (set_name, text, embedding) = found.get(&n.id).cloned().ok_or_else(|| {
                    Error::bad_file(
                        &self.path,
                        format!(
                            "neighbour {} of the neighbour table is not in this store",
                            n.id
                        ),
                    )
                })?;
                Ok(Neighbor {
                    id: n.id.clone(),
                    set_name,
                    distance: n.distance,
                    text,
                    embedding,
                })
            })
            .collect()
    }

    /// The `limit` nearest documents to `vector` under `metric` passing `filter`, nearest first;
    /// each with its unsquared L2 distance.
    fn search(
        &self,
        vector: &[f32],
        limit: usize,
        mode: SearchMode,
        metric: DistanceType,
        filter: Option<(&str, Filter)>,
    ) -> Result<Vec<Neighbor>> {
        let mut query = self
            .table
            .vector_search(vector)
            .map_err(|e| self.err(e))?
            .column("embedding")
            .distance_type(metric)
            .select(Select::columns(&[
                "id",
                "set_name",
                "text",
                "embedding",
                "_distance",
            ]))
            .limit(limit);
        if let Some((predicate, when)) = filter {
            query = query.only_if(predicate);
            if when == Filter::After {
                query = query.postfilter();
            }
        }
        query = match mode {
            SearchMode::Exact => query.bypass_vector_index(),
            SearchMode::Indexed {
                nprobes,
                refine_factor,
                ef,
            } => {
                let mut q = query.nprobes(nprobes).map_err(|e| self.err(e))?;
                if let Some(ef) = ef {
                    check_ef(ef, limit, refine_factor)?;
                    q = q.ef(ef);
                }
                match refine_factor {
                    Some(r) => q.refine_factor(r),
                    None => q,
                }
            }
        };
        let batches: Vec<RecordBatch> = self
            .block_on(async { query.execute().await?.try_collect().await })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for b in &batches {
            let ids = string_column(&self.path, b, "id")?;
            let sets = string_column(&self.path, b, "set_name")?;
            let texts = string_column(&self.path, b, "text")?;
            let dist = f32_column(&self.path, b, "_distance")?;
            let embeddings = embedding_column(&self.path, b)?;
            for (i, ((id, set_name), text)) in ids.into_iter().zip(sets).zip(texts).enumerate() {
                let embedding = embedding_at(&self.path, embeddings, i)?;
                // LanceDB's L2 is the squared distance; the original filters on the unsquared one.
                let squared = match metric {
                    DistanceType::L2 => dist[i],
                    _ => embedding
                        .iter()
                        .zip(vector)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum(),
                };
                out.push(Neighbor {
                    id,
                    set_name,
                    distance: squared.max(0.0).sqrt(),
                    text,
                    embedding,
                });
            }
        }
        if metric == DistanceType::L2 {
            out.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::check_ef;

    #[test]
    fn an_ef_below_the_candidates_asked_for_names_ef() {
        assert!(check_ef(50, 50, None).is_ok());
        assert!(check_ef(100, 50, Some(2)).is_ok());
        // ef 50 at k 50 and refine 2: what Lance refused with "ef must be greater than or equal to k".
        let e = check_ef(50, 50, Some(2)).unwrap_err().to_string();
        assert!(e.contains("ef") && e.contains("--ef 100"), "{e}");
        // The query document left out: k + 1 results.
        assert!(check_ef(50, 51, None).is_err());
    }
}
