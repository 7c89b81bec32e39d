//! A run's lifecycle, the top of the runner: the store, the model and the backend opened once, the
//! run created (or a killed one resumed) in the results database, the engine (`engine.rs`) run
//! over the planned documents, and each finished document recorded in one transaction. The
//! database is opened for each write and closed after it, so others can read it (or record another
//! run in it) while the run goes.
use std::collections::HashSet;
use std::path::Path;

use super::backend::Backend;
use super::engine::{Engine, Finished};
use super::event::Event;
use super::neighbors::LoadedTable;
use super::plan;
use super::retrieve::{Oracle, Retriever};
use super::settings::{serde_name, RunConfig};
use crate::embed::EncoderConfig;
use crate::error::{Error, Result};
use crate::lm::{weights, LanguageModel};
use crate::records::{Db, NewRun, RunStatus};
use crate::store::Store;
use crate::ttt::OptimizerState;

/// Where a resumed run goes on: the documents kept, and from which `seq` on recorded ones are
/// deleted and redone.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ResumePoint {
    /// `seq`s of the documents kept.
    pub done: HashSet<usize>,
    /// Recorded documents from this `seq` on are redone (`i64::MAX`: none).
    pub keep_below: i64,
}

impl ResumePoint {
    /// What to keep of `recorded` documents. A run that carries AdamW state across documents
    /// (`needs_state`) can go on only after the last document whose state was saved
    /// (`saved_after`, its `seq`); the documents recorded after it are redone.
    pub fn new(recorded: &[i64], needs_state: bool, saved_after: Option<i64>) -> Self {
        let keep_below = if needs_state && !recorded.is_empty() {
            saved_after.map_or(0, |seq| seq + 1)
        } else {
            i64::MAX
        };
        ResumePoint {
            done: recorded
                .iter()
                .filter(|&&s| s < keep_below)
                .map(|&s| s as usize)
                .collect(),
            keep_below,
        }
    }
}

/// Runs (or, with `resume`, continues) a TTT-NN run recorded in the results database at
/// `db_path`; returns its id.
pub fn run(
    cfg: &RunConfig,
    db_path: &Path,
    resume: Option<i64>,
    on_event: &mut dyn FnMut(Event),
) -> Result<i64> {
    let cfg = &cfg.clone().normalized()?;
    let store = Store::open(cfg.store()?)?;
    if let Some(dir) = &cfg.encoder {
        // Only the dimension is checked: the run never embeds (its documents are stored).
        let dim = EncoderConfig::load(dir)?.hidden_size;
        if dim != store.dim() {
            return Err(Error::bad_file(
                dir,
                format!(
                    "encoder embeds in {dim} dimensions, the store {} holds {}",
                    store.path().display(),
                    store.dim()
                ),
            ));
        }
    }
    let plan = plan::plan_store(&store, &plan::Selection::of(&cfg.docs)?)?;
    let table = match &cfg.neighbors_from {
        Some(path) => {
            let docs: Vec<&str> = plan.iter().map(|d| d.doc_id.as_str()).collect();
            Some(LoadedTable::load(path, cfg, &store, &docs)?)
        }
        None => None,
    };
    let model_hash = weights::content_hash(cfg.model()?)?;
    let mut lm = LanguageModel::load_with(cfg.model()?, cfg.device, cfg.lora().as_ref())?;
    let backend = Backend::new(cfg, &mut lm, on_event)?;
    let lifecycle = Lifecycle {
        cfg,
        db_path,
        lm: &lm,
    };
    let oracle = match cfg.schedule.oracle_run {
        Some(run) => Some(Oracle::load(db_path, run, &plan)?),
        None => None,
    };
    let reference = match &cfg.exact_reference {
        Some(path) => {
            let docs: Vec<&str> = plan.iter().map(|d| d.doc_id.as_str()).collect();
            Some(LoadedTable::load_reference(
                path,
                &cfg.search,
                &store,
                &docs,
            )?)
        }
        None => None,
    };
    let retriever = Retriever {
        cfg,
        store,
        table,
        oracle,
        reference,
    };
    let mut engine = Engine {
        cfg,
        lm: &lm,
        retriever: &retriever,
        backend,
        checkpoint: None,
    };
    let (run_id, done) = match resume {
        None => (
            lifecycle.create(&retriever.store, model_hash, engine.backend.lanes())?,
            HashSet::new(),
        ),
        Some(id) => (id, lifecycle.resume(id, &mut engine.backend)?),
    };
    if lifecycle.carries_state() {
        let path = Db::artifact_path_of(db_path, run_id, "optimizer");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        engine.checkpoint = Some(path);
    }
    on_event(Event::Started {
        run_id,
        total: plan.len(),
        done: done.len(),
    });
    let result = engine.run(
        &plan,
        &done,
        &mut |finished, on_event| lifecycle.record(run_id, finished, on_event),
        on_event,
    );
    let db = lifecycle.db()?;
    match &result {
        Ok(()) => {
            db.set_status(run_id, RunStatus::Finished, None)?;
            let state = db.artifact_path(run_id, "optimizer");
            if state.exists() {
                std::fs::remove_file(&state).map_err(|e| Error::io(&state, e))?;
            }
        }
        Err(e) => db.set_status(run_id, RunStatus::Failed, Some(&e.to_string()))?,
    }
    result.map(|_| run_id)
}

/// What creating, resuming and recording a run needs.
struct Lifecycle<'a> {
    cfg: &'a RunConfig,
    /// The results database, opened for each write ([`Lifecycle::db`]).
    db_path: &'a Path,
    lm: &'a LanguageModel,
}

impl Lifecycle<'_> {
    /// The results database, open until the returned handle is dropped.
    fn db(&self) -> Result<Db> {
        Db::open(self.db_path)
    }

    /// Whether AdamW state goes from one document to the next (and so is saved after each).
    fn carries_state(&self) -> bool {
        self.cfg.method.trains() && self.cfg.optimizer_state == OptimizerState::Carry
    }

    /// Records a new run over `store`, trained `lanes` documents at a time; returns its id.
    fn create(&self, store: &Store, model_hash: String, lanes: usize) -> Result<i64> {
        let cfg = self.cfg;
        self.db()?.create_run(&NewRun {
            name: cfg.name.as_deref(),
            method: serde_name(&cfg.method),
            selection: serde_name(&cfg.select),
            task: cfg.task()?.to_string(),
            model: cfg.model()?.display().to_string(),
            model_hash,
            encoder: cfg.encoder.as_ref().map(|p| p.display().to_string()),
            store: store.path().display().to_string(),
            store_version: store.version()?,
            neighbors: cfg.search.neighbors,
            max_length: cfg.max_length.unwrap_or(self.lm.n_ctx),
            shard: cfg.docs.shard,
            lanes,
            adapter: match &self.lm.lora {
                None => "full".into(),
                Some(l) => format!(
                    "lora r={} alpha={} {}",
                    l.rank,
                    l.alpha,
                    l.targets.join(",")
                ),
            },
            config: cfg.to_json()?,
            defaults: RunConfig::default().to_json()?,
        })
    }

    /// Reopens run `id`: loads the AdamW state it saved, deletes what was recorded after it, and
    /// returns the documents that stay done.
    fn resume(&self, id: i64, backend: &mut Backend) -> Result<HashSet<usize>> {
        let db = self.db()?;
        let recorded = db.recorded_seqs(id)?;
        // AdamW's state after the last document is needed to go on as the original would.
        let needs_state = self.carries_state();
        let path = db.artifact_path(id, "optimizer");
        let saved_after = if needs_state && !recorded.is_empty() && path.is_file() {
            backend.load_optimizer(&path)?
        } else {
            None
        };
        let point = ResumePoint::new(&recorded, needs_state, saved_after);
        let redone = db.delete_docs_from(id, point.keep_below)?;
        if redone > 0 {
            tracing::info!("run {id}: {redone} document(s) recorded after the last saved optimizer state are redone");
        }
        db.set_status(id, RunStatus::Running, None)?;
        Ok(point.done)
    }

    /// Records a finished document in one transaction and reports it.
    fn record(
        &self,
        run_id: i64,
        finished: Finished,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let Finished {
            doc,
            retrieved,
            outcome,
        } = finished;
        let record = outcome.record(doc, &retrieved);
        // Held only for this write: readers and other runs wait at most this long.
        self.db()?
            .record_doc(run_id, &record, &outcome.curve, &outcome.neighbors)?;
        let (bpb_before, bpb_after) = outcome.before_after();
        on_event(Event::Document {
            doc,
            record: &record,
            bpb_before,
            bpb_after,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_without_carried_state_keeps_every_recorded_document() {
        let p = ResumePoint::new(&[0, 1, 2, 4], false, None);
        assert_eq!(p.keep_below, i64::MAX);
        assert_eq!(p.done, HashSet::from([0, 1, 2, 4]));
    }

    #[test]
    fn carried_state_keeps_documents_up_to_the_last_saved_state() {
        // Killed after recording seq 3 but before saving its state: 3 is redone.
        let p = ResumePoint::new(&[0, 1, 2, 3], true, Some(2));
        assert_eq!(p.keep_below, 3);
        assert_eq!(p.done, HashSet::from([0, 1, 2]));
        // No state saved at all: everything is redone.
        let p = ResumePoint::new(&[0, 1], true, None);
        assert_eq!((p.keep_below, p.done.len()), (0, 0));
        // Nothing recorded: nothing to load or redo.
        assert_eq!(ResumePoint::new(&[], true, None).keep_below, i64::MAX);
    }
}
