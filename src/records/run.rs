//! A run's lifecycle in the results database: created `running`, its documents recorded one
//! transaction each, `finished` or `failed` at the end; resume reads back what was recorded.
use duckdb::params;

use super::Db;
use crate::error::{Error, Result};
use crate::store::RetrievalQuality;
use crate::task::Shard;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Started and not ended (or killed: resume it).
    Running,
    /// Every planned document is recorded.
    Finished,
    /// Stopped by an error (recorded in `runs.error`).
    Failed,
}

impl RunStatus {
    /// The value of `runs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [RunStatus::Running, RunStatus::Finished, RunStatus::Failed]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A run's provenance and the columns queries filter on; every setting is in `config`.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub name: Option<&'a str>,
    pub method: String,
    pub selection: String,
    pub task: String,
    pub model: String,
    pub model_hash: String,
    pub encoder: Option<String>,
    pub store: String,
    pub store_version: u64,
    pub neighbors: usize,
    /// Tokens per training chunk as run (the model's context length unless set).
    pub max_length: usize,
    pub shard: Shard,
    /// Test documents trained at once (`--lanes`).
    pub lanes: usize,
    /// What TTT trains: `full`, or `lora r=… alpha=… targets`.
    pub adapter: String,
    /// The run's settings as JSON (the runner's settings type).
    pub config: String,
    /// Every setting at its default, as JSON: the `run_settings` view has a column for each,
    /// whether or not an older run in the database recorded it.
    pub defaults: String,
}

/// A recorded run as resume and merge read it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Where it stands.
    pub status: RunStatus,
    /// Its settings as JSON.
    pub config: String,
}

/// One evaluated document.
#[derive(Debug, Clone, Default)]
pub struct DocRecord {
    pub doc_id: String,
    pub task: String,
    pub set_name: String,
    pub position: usize,
    pub seq: usize,
    pub bytes: u64,
    pub words: u64,
    pub tokens: usize,
    pub neighbors_used: usize,
    pub complete: bool,
    pub retrieval_s: f64,
    pub train_s: f64,
    pub eval_s: f64,
    pub train_steps: usize,
    pub skipped_chunks: usize,
    pub alpha: Option<f64>,
    pub alpha_source: Option<String>,
    pub context_tokens: Option<usize>,
    pub context_fallback: Option<bool>,
    /// Tokens its training put through the model.
    pub train_tokens: usize,
    /// Token positions its training computed, padding of lanes included.
    pub computed_tokens: f64,
    /// The largest 13-gram Jaccard similarity of a neighbour with the document (leakage audit).
    pub max_jaccard13: Option<f64>,
    /// Its neighbours measured against the exact ones (`--exact-reference`).
    pub retrieval_quality: Option<RetrievalQuality>,
}

/// One point of a document's curve: its log-likelihood after `k` neighbours trained.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurveRecord {
    /// Neighbours trained so far, every pass counted (0: the base model; under dynamic
    /// evaluation, passes over the prefix).
    pub k: usize,
    /// The pass the point ends a group of (0 for k = 0).
    pub pass: usize,
    /// Σ natural-log probability of the scored text.
    pub loglik: f64,
}

/// One neighbour a document was trained on, once per pass.
#[derive(Debug, Clone, Default)]
pub struct NeighborRecord {
    /// Its search rank (1: the nearest; under SIFT, the order SIFT picked it in).
    pub rank: usize,
    pub neighbor_id: String,
    pub distance: f64,
    pub tokens: usize,
    pub chunks: usize,
    pub train_loss: Option<f64>,
    pub train_s: f64,
    pub eval_s: Option<f64>,
    /// 13-gram Jaccard similarity of its text with the document's (leakage audit).
    pub jaccard13: Option<f64>,
    /// Its place in its pass's training order (1: trained first).
    pub position: usize,
    /// The pass it was trained in (from 1).
    pub pass: usize,
    /// Neighbours trained once it was, every pass counted: the curve point it leads to.
    pub k: usize,
}

impl Db {
    /// Inserts a run in state `running` and returns its id.
    pub fn create_run(&self, run: &NewRun) -> Result<i64> {
        let id = self
            .conn
            .query_row(
                "INSERT INTO runs (name, method, selection, status, task, model, model_hash, encoder,
                     store, store_version, neighbors, max_length, shard_index, shard_count, lanes,
                     adapter, config, tttnn_version, git_commit)
                 VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                 RETURNING id",
                params![
                    run.name,
                    run.method,
                    run.selection,
                    run.task,
                    run.model,
                    run.model_hash,
                    run.encoder,
                    run.store,
                    run.store_version as i64,
                    run.neighbors as i64,
                    run.max_length as i64,
                    run.shard.index as i64,
                    run.shard.count as i64,
                    run.lanes as i64,
                    run.adapter,
                    run.config,
                    crate::VERSION,
                    crate::GIT_COMMIT,
                ],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        self.refresh_settings_view(Some(&run.defaults))?;
        Ok(id)
    }

    /// Sets a run's status, with the error of a failed one.
    pub fn set_status(&self, run_id: i64, status: RunStatus, error: Option<&str>) -> Result<()> {
        self.conn
            .execute(
                "UPDATE runs SET status = ?, error = ?,
                     finished_at = CASE WHEN ? THEN current_timestamp ELSE NULL END
                 WHERE id = ?",
                params![status.as_str(), error, status != RunStatus::Running, run_id],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// A run's status and config JSON, if it exists.
    pub fn run(&self, run_id: i64) -> Result<Option<RunRow>> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT status, CAST(config AS VARCHAR) FROM runs WHERE id = ?",
                params![run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map(Some)
            .or_else(|e| match e {
                duckdb::Error::QueryReturnedNoRows => Ok(None),
                e => Err(self.err(e)),
            })?;
        row.map(|(status, config)| {
            let status = RunStatus::parse(&status).ok_or_else(|| {
                Error::bad_file(&self.path, format!("run {run_id} has status `{status}`"))
            })?;
            Ok(RunRow { status, config })
        })
        .transpose()
    }

    /// The runs named `name`, newest first: (id, status and config).
    pub fn runs_named(&self, name: &str) -> Result<Vec<(i64, RunRow)>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, status, CAST(config AS VARCHAR) FROM runs WHERE name = ?
                 ORDER BY id DESC",
            )
            .map_err(|e| self.err(e))?;
        let rows: Vec<(i64, String, String)> = stmt
            .query_map([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))?;
        rows.into_iter()
            .map(|(id, status, config)| {
                let status = RunStatus::parse(&status).ok_or_else(|| {
                    Error::bad_file(&self.path, format!("run {id} has status `{status}`"))
                })?;
                Ok((id, RunRow { status, config }))
            })
            .collect()
    }

    /// Evaluation-order numbers (`seq`) of the documents a run has recorded.
    pub fn recorded_seqs(&self, run_id: i64) -> Result<Vec<i64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq FROM docs WHERE run_id = ? ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![run_id], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Deletes a run's documents from evaluation-order number `seq` on (they are redone); returns
    /// how many.
    pub fn delete_docs_from(&self, run_id: i64, seq: i64) -> Result<usize> {
        self.in_transaction(|c| {
            let n: i64 = c.query_row(
                "SELECT count(*) FROM docs WHERE run_id = ? AND seq >= ?",
                params![run_id, seq],
                |r| r.get(0),
            )?;
            for table in ["curve", "neighbors"] {
                c.execute(
                    &format!(
                        "DELETE FROM {table} WHERE run_id = $1 AND doc_id IN
                             (SELECT doc_id FROM docs WHERE run_id = $1 AND seq >= $2)"
                    ),
                    params![run_id, seq],
                )?;
            }
            c.execute(
                "DELETE FROM docs WHERE run_id = ? AND seq >= ?",
                params![run_id, seq],
            )?;
            Ok(n as usize)
        })
    }

    /// Records one document — its row, curve and neighbours — in one transaction, so a killed run
    /// never leaves half a document behind.
    pub fn record_doc(
        &self,
        run_id: i64,
        doc: &DocRecord,
        curve: &[CurveRecord],
        neighbors: &[NeighborRecord],
    ) -> Result<()> {
        let quality = doc.retrieval_quality;
        self.in_transaction(|c| {
            c.execute(
                "INSERT INTO docs (run_id, doc_id, set_name, bytes, words, tokens, neighbors_used,
                     complete, retrieval_s, train_s, eval_s, task, position, seq, train_steps, skipped_chunks,
                     alpha, alpha_source, context_tokens, context_fallback, max_jaccard13,
                     train_tokens, computed_tokens, exact_neighbors, shared_neighbors, recall_at_k,
                     rank_correlation)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                params![
                    run_id,
                    doc.doc_id,
                    doc.set_name,
                    doc.bytes as i64,
                    doc.words as i64,
                    doc.tokens as i64,
                    doc.neighbors_used as i64,
                    doc.complete,
                    doc.retrieval_s,
                    doc.train_s,
                    doc.eval_s,
                    doc.task,
                    doc.position as i64,
                    doc.seq as i64,
                    doc.train_steps as i64,
                    doc.skipped_chunks as i64,
                    doc.alpha,
                    doc.alpha_source,
                    doc.context_tokens.map(|n| n as i64),
                    doc.context_fallback,
                    doc.max_jaccard13,
                    doc.train_tokens as i64,
                    doc.computed_tokens,
                    quality.map(|q| q.exact_neighbors as i64),
                    quality.map(|q| q.shared_neighbors as i64),
                    quality.and_then(|q| q.recall_at_k),
                    quality.and_then(|q| q.rank_correlation),
                ],
            )?;
            {
                let mut app = c.appender("curve")?;
                for p in curve {
                    app.append_row(params![
                        run_id,
                        doc.doc_id,
                        p.k as i64,
                        p.loglik,
                        p.pass as i64
                    ])?;
                }
            }
            for n in neighbors {
                c.execute(
                    "INSERT INTO neighbors (run_id, doc_id, rank, neighbor_id, distance, tokens, chunks,
                         train_loss, train_s, eval_s, jaccard13, position, pass, k)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    params![
                        run_id,
                        doc.doc_id,
                        n.rank as i64,
                        n.neighbor_id,
                        n.distance,
                        n.tokens as i64,
                        n.chunks as i64,
                        n.train_loss.filter(|l| l.is_finite()),
                        n.train_s,
                        n.eval_s,
                        n.jaccard13,
                        n.position as i64,
                        n.pass as i64,
                        n.k as i64,
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// (Re)creates the view `run_settings`: one row per run, one column per setting of its config
    /// JSON, typed from the recorded values (and `defaults`, every setting of this tttnn at its
    /// default, when the caller has them), so a new setting shows up as a column without a
    /// migration.
    pub(crate) fn refresh_settings_view(&self, defaults: Option<&str>) -> Result<()> {
        let structure: Option<String> = self
            .conn
            .query_row(
                "SELECT CAST(json_group_structure(c) AS VARCHAR) FROM
                     (SELECT config AS c FROM runs
                      UNION ALL SELECT CAST(? AS JSON) WHERE ? IS NOT NULL)",
                params![defaults, defaults],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        let Some(structure) = structure.filter(|s| s.starts_with('{')) else {
            // No run and no defaults (or no settings in them): nothing to type settings by yet.
            return self
                .conn
                .execute_batch(
                    "CREATE OR REPLACE VIEW run_settings AS SELECT id AS run_id FROM runs",
                )
                .map_err(|e| self.err(e));
        };
        // A setting that is null in every run has no type to read: VARCHAR shows the nulls.
        let structure = structure.replace("\"NULL\"", "\"VARCHAR\"");
        self.conn
            .execute_batch(&format!(
                "CREATE OR REPLACE VIEW run_settings AS
                 SELECT id AS run_id, unnest(json_transform(config, '{}'))
                 FROM runs",
                structure.replace('\'', "''")
            ))
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::RunConfig;

    fn new_run(config: String) -> NewRun<'static> {
        NewRun {
            name: None,
            method: "ttt-nn".into(),
            selection: "nn".into(),
            task: "pile_all".into(),
            model: "m".into(),
            model_hash: "h".into(),
            encoder: None,
            store: "s".into(),
            store_version: 1,
            neighbors: 50,
            max_length: 1024,
            shard: Shard::ALL,
            lanes: 1,
            adapter: "full".into(),
            config,
            defaults: RunConfig::default().to_json().unwrap(),
        }
    }

    #[test]
    fn run_settings_has_a_typed_column_per_setting_even_beside_old_configs() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("r.duckdb")).unwrap();
        // A config as tttnn recorded it before the settings were one struct.
        let old = r#"{"lr": 0.5, "sift": {"lambda": 0.01, "adaptive": null},
                      "shard": {"index": 0, "count": 1}, "in_context_order": "original"}"#;
        let old_id = db.create_run(&new_run(old.into())).unwrap();
        let cfg = RunConfig {
            lr: 1e-3,
            ..RunConfig::default()
        };
        let id = db.create_run(&new_run(cfg.to_json().unwrap())).unwrap();
        let (lr, order, shard): (f64, String, String) = db
            .conn
            .query_row(
                "SELECT lr, in_context_order, CAST(shard AS VARCHAR) FROM run_settings WHERE run_id = ?",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (lr, order.as_str(), shard.trim_matches('"')),
            (1e-3, "nearest-last", "0/1")
        );
        let old_lr: f64 = db
            .conn
            .query_row(
                "SELECT lr FROM run_settings WHERE run_id = ?",
                [old_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_lr, 0.5);
        assert_eq!(
            db.run(id).unwrap().map(|r| r.status),
            Some(RunStatus::Running)
        );
        assert!(db.run(id + 10).unwrap().is_none());
    }
}
