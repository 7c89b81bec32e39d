//! A planned document's text and neighbours: read from the store and searched (or read from a
//! neighbour table, `--neighbors-from`), nearest first or as SIFT picks them.
use std::time::Instant;

use super::neighbors::{needed, LoadedTable};
use super::plan::PlannedDoc;
use super::settings::RunConfig;
use crate::error::Result;
use crate::select::{self, SiftPool};
use crate::store::{Neighbor, Retrieval, Store};

/// Where a run's documents and neighbours come from.
pub(super) struct Retriever<'a> {
    pub cfg: &'a RunConfig,
    pub store: Store,
    /// The neighbour table read instead of searching (`--neighbors-from`).
    pub table: Option<LoadedTable>,
}

/// A document as a method starts on it: its text and its neighbours.
pub(super) struct Retrieved {
    pub text: String,
    pub neighbors: Vec<Neighbor>,
    /// Seconds spent reading the text and finding the neighbours.
    pub retrieval_s: f64,
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
        Ok(Retrieved {
            text: stored.text,
            neighbors,
            retrieval_s: t.elapsed().as_secs_f64(),
        })
    }
}
