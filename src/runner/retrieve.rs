//! A planned document's text and neighbours: read from the store and searched (or read from a
//! neighbour table, `--neighbors-from`), nearest first or as SIFT picks them.
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use super::neighbors::{needed, LoadedTable};
use super::plan::PlannedDoc;
use super::settings::{serde_name, Method, RunConfig};
use crate::error::{Error, Result};
use crate::records::{Db, NeighborGain, NeighborGains};
use crate::select::{self, SiftPool};
use crate::store::{Neighbor, Retrieval, RetrievalQuality, Store};

/// Where a run's documents and neighbours come from.
pub(super) struct Retriever<'a> {
    pub cfg: &'a RunConfig,
    pub store: Store,
    /// The neighbour table read instead of searching (`--neighbors-from`).
    pub table: Option<LoadedTable>,
    /// The gains that order each document's neighbours (`--neighbor-order oracle`).
    pub oracle: Option<Oracle>,
    /// The exact neighbours each document's are measured against (`--exact-reference`).
    pub reference: Option<LoadedTable>,
}

/// A document as a method starts on it: its text and its neighbours.
pub(super) struct Retrieved {
    pub text: String,
    pub neighbors: Vec<Neighbor>,
    /// Seconds spent reading the text and finding the neighbours.
    pub retrieval_s: f64,
    /// The oracle order of the neighbours (indices into `neighbors`), with
    /// `--neighbor-order oracle`.
    pub oracle_order: Option<Vec<usize>>,
    /// The neighbours measured against the exact ones, with `--exact-reference`.
    pub quality: Option<RetrievalQuality>,
}

/// What each neighbour was worth in an earlier run of the same documents (`--oracle-run`): the
/// oracle order trains the most helpful first (the largest fall in bits per byte; ties by rank).
pub(super) struct Oracle {
    run: i64,
    gains: HashMap<String, Vec<NeighborGain>>,
}

impl Oracle {
    /// Reads run `run`'s gains from the results database at `db`, checking it recorded each of
    /// `docs` and was evaluated after every one of their neighbours.
    pub fn load(db: &Path, run: i64, docs: &[PlannedDoc]) -> Result<Self> {
        let bad = |message: String| Error::setting("oracle_run", message);
        let db = Db::open_read_only(db)?;
        let row = db
            .run(run)?
            .ok_or_else(|| bad(format!("no run {run} in {}", db.path().display())))?;
        let method = RunConfig::from_recorded(&row.config)?.method;
        if method != Method::TttNn {
            return Err(bad(format!(
                "run {run} is {}, not ttt-nn: its neighbours were not trained on",
                serde_name(&method)
            )));
        }
        let NeighborGains {
            by_doc: gains,
            neighbors: counts,
        } = db.neighbor_gains(run)?;
        for doc in docs {
            let Some(&count) = counts.get(&doc.doc_id) else {
                return Err(bad(format!(
                    "run {run} did not record document {} (it must cover the run's documents)",
                    doc.doc_id
                )));
            };
            let measured = gains.get(&doc.doc_id).map_or(0, Vec::len);
            if measured != count {
                return Err(bad(format!(
                    "run {run} measured {measured} of document {}'s {count} neighbours: the \
                     oracle needs a run evaluated after every neighbour (--eval-at all, \
                     --neighbors-per-step 1)",
                    doc.doc_id
                )));
            }
        }
        Ok(Oracle { run, gains })
    }

    /// The oracle order of `doc_id`'s `neighbors`: indices by measured gain, the most helpful
    /// first; the neighbours must be the ones the oracle run trained on.
    pub fn order(&self, doc_id: &str, neighbors: &[Neighbor]) -> Result<Vec<usize>> {
        let gains = self.gains.get(doc_id).map(Vec::as_slice).unwrap_or(&[]);
        let change: HashMap<&str, f64> = gains
            .iter()
            .map(|g| (g.neighbor_id.as_str(), g.bpb_change))
            .collect();
        let found: Option<Vec<f64>> = neighbors
            .iter()
            .map(|n| change.get(n.id.as_str()).copied())
            .collect();
        let found = match found {
            Some(f) if f.len() == gains.len() => f,
            _ => {
                return Err(Error::setting(
                    "oracle_run",
                    format!(
                        "document {doc_id}'s neighbours here are not those run {} trained on: \
                         the oracle orders the same neighbours (same store, k and retrieval)",
                        self.run
                    ),
                ))
            }
        };
        let mut order: Vec<usize> = (0..neighbors.len()).collect();
        order.sort_by(|&a, &b| found[a].total_cmp(&found[b]).then(a.cmp(&b)));
        Ok(order)
    }
}

impl Retriever<'_> {
    /// The neighbours of `vector`, nearest first, or as SIFT picks them.
    pub fn neighbors(&self, vector: &[f32], exclude: &str) -> Result<Vec<Neighbor>> {
        let cfg = self.cfg;
        let k = needed(cfg);
        let retrieval = Retrieval {
            k,
            mode: cfg.search_mode(),
            max_distance: cfg.search.distance_threshold,
            exclude_id: Some(exclude.to_string()),
            split: Some(cfg.search.neighbor_split.clone()),
            datastore: cfg.search.datastore(),
        };
        let candidates = match (&self.table, cfg.select.is_sift(), cfg.sift_pool) {
            (Some(table), _, _) => table.neighbors(&self.store, exclude, k)?,
            (None, true, SiftPool::InnerProduct) => {
                self.store.retrieve_by_inner_product(vector, &retrieval)?
            }
            _ => self.store.retrieve(vector, &retrieval)?,
        };
        if !cfg.select.is_sift() {
            return Ok(candidates);
        }
        let embeddings: Vec<Vec<f32>> = candidates.iter().map(|c| c.embedding.clone()).collect();
        let picks = select::sift(vector, &embeddings, cfg.search.neighbors, &cfg.sift());
        Ok(picks.iter().map(|p| candidates[p.index].clone()).collect())
    }

    /// A planned document's text and (when the method uses them) neighbours.
    pub fn retrieve(&self, doc: &PlannedDoc) -> Result<Retrieved> {
        let t = Instant::now();
        let stored = self.store.expect_document(&doc.doc_id)?;
        let neighbors = if self.cfg.method.uses_neighbors() {
            self.neighbors(&stored.embedding, &doc.doc_id)?
        } else {
            Vec::new()
        };
        // Only ttt-nn takes a neighbour order (the settings refuse it elsewhere).
        let oracle_order = self
            .oracle
            .as_ref()
            .map(|o| o.order(&doc.doc_id, &neighbors))
            .transpose()?;
        let quality = match &self.reference {
            Some(reference) => {
                let retrieved: Vec<&str> = neighbors.iter().map(|n| n.id.as_str()).collect();
                let exact = reference.ids(&doc.doc_id, self.cfg.search.neighbors)?;
                Some(RetrievalQuality::measure(&retrieved, &exact))
            }
            None => None,
        };
        Ok(Retrieved {
            text: stored.text,
            neighbors,
            retrieval_s: t.elapsed().as_secs_f64(),
            oracle_order,
            quality,
        })
    }
}
