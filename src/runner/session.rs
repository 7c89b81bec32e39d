//! One run's session: the store, the model and the trainer opened once, the run created (or a
//! killed one resumed) in the results database, then every planned document done in order and
//! recorded in one transaction each. The database is opened for each write and closed after it,
//! so others can read it (or record another run in it) while the run goes.
use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use super::interpolate::{interpolate, Alpha};
use super::methods::{in_context, DocRun, Outcome};
use super::neighbors::{needed, LoadedTable};
use super::plan::{self, PlannedDoc};
use super::settings::{serde_name, Lanes, Method, RunConfig};
use super::Event;
use crate::embed::EncoderConfig;
use crate::error::{Error, Result};
use crate::eval::NGrams;
use crate::lm::{weights, LanguageModel};
use crate::records::{Db, NewRun, RunStatus};
use crate::select::{self, SiftPool};
use crate::store::{Neighbor, Retrieval, Store};
use crate::ttt::{LanePlan, LaneTrainer, OptimizerState, TrainConfig, Trainer};

/// Everything a run works with while it goes through its documents.
pub(super) struct Session<'a> {
    pub cfg: &'a RunConfig,
    /// The results database, opened for each write ([`Session::db`]).
    pub db_path: &'a Path,
    pub store: Store,
    pub lm: &'a LanguageModel,
    /// The neighbour table read instead of searching (`--neighbors-from`).
    pub table: Option<LoadedTable>,
}

/// How a run trains: one document at a time, or several in lanes (`--lanes`).
enum Training {
    Sequential(Trainer),
    Lanes(LaneTrainer),
}

impl Training {
    /// Documents trained at once.
    fn lanes(&self) -> usize {
        match self {
            Training::Sequential(_) => 1,
            Training::Lanes(l) => l.lanes(),
        }
    }
}

/// A document as a method starts on it: its text and its neighbours.
pub(super) struct Retrieved {
    pub text: String,
    pub neighbors: Vec<Neighbor>,
    /// Seconds spent reading the text and finding the neighbours.
    pub retrieval_s: f64,
}

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
    let plan = plan::plan_store(
        &store,
        &plan::Selection {
            task: cfg.task()?,
            split: &cfg.split,
            val_portion: cfg.val_portion,
            seed: cfg.seed,
            limit_docs: cfg.limit_docs,
            shard: cfg.shard,
        },
    )?;
    let table = match &cfg.neighbors_from {
        Some(path) => {
            let docs: Vec<&str> = plan.iter().map(|d| d.doc_id.as_str()).collect();
            Some(LoadedTable::load(path, cfg, &store, &docs)?)
        }
        None => None,
    };
    let model_hash = weights::content_hash(cfg.model()?)?;
    let lm = LanguageModel::load_with(cfg.model()?, cfg.device, cfg.lora().as_ref())?;
    // The trainer moves the fp32 weights into flat buffers; bf16 is mixed precision (ttt::adamw).
    let train = TrainConfig {
        lr: cfg.lr,
        max_length: cfg.max_length.unwrap_or(lm.n_ctx),
        precision: cfg.precision,
        short_chunks: cfg.short_chunks,
        dropout: cfg.dropout,
        ..Default::default()
    };
    let mut training = if cfg.lanes.many() {
        if cfg.dropout.on() && lm.dropout > 0.0 {
            // Each lane would need its own document's stream of masks, drawn as a run of one
            // document at a time draws them; one batched draw cannot give that.
            return Err(Error::setting(
                "dropout",
                format!(
                    "{} trains with dropout {} and lanes cannot draw each document's masks as \
                     a run without lanes does: give --dropout off (a departure) or --lanes 1",
                    lm.dir.join("config.json").display(),
                    lm.dropout
                ),
            ));
        }
        let asked = match cfg.lanes {
            Lanes::Fixed(n) => Some(n),
            Lanes::Auto => None,
        };
        let budget = match cfg.memory_gib {
            Some(gib) => Some((gib * (1u64 << 30) as f64) as u64),
            None => cfg.device.memory_bytes(),
        };
        let plan = LanePlan::new(&lm, &train, asked, budget)?;
        on_event(Event::Planned { plan: &plan });
        if plan.lanes > 1 {
            Training::Lanes(LaneTrainer::new(&lm, train, plan.lanes)?)
        } else {
            Training::Sequential(Trainer::new(&lm, train)?)
        }
    } else {
        Training::Sequential(Trainer::new(&lm, train)?)
    };
    let session = Session {
        cfg,
        db_path,
        store,
        lm: &lm,
        table,
    };
    let (run_id, mut done) = match resume {
        None => (
            session.create(model_hash, training.lanes())?,
            HashSet::new(),
        ),
        Some(id) => (id, session.resume(id, &mut training)?),
    };
    on_event(Event::Started {
        run_id,
        total: plan.len(),
        done: done.len(),
    });
    let result = match &mut training {
        Training::Sequential(trainer) => {
            session.documents(trainer, &plan, run_id, &mut done, on_event)
        }
        Training::Lanes(lanes) => {
            session.documents_in_lanes(lanes, &plan, run_id, &mut done, on_event)
        }
    };
    let db = session.db()?;
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

impl Session<'_> {
    /// The results database, open until the returned handle is dropped.
    fn db(&self) -> Result<Db> {
        Db::open(self.db_path)
    }

    /// Records a new run, trained `lanes` documents at a time; returns its id.
    fn create(&self, model_hash: String, lanes: usize) -> Result<i64> {
        let cfg = self.cfg;
        self.db()?.create_run(&NewRun {
            name: cfg.name.as_deref(),
            method: serde_name(&cfg.method),
            selection: serde_name(&cfg.select),
            task: cfg.task()?.to_string(),
            model: cfg.model()?.display().to_string(),
            model_hash,
            encoder: cfg.encoder.as_ref().map(|p| p.display().to_string()),
            store: self.store.path().display().to_string(),
            store_version: self.store.version()?,
            neighbors: cfg.neighbors,
            max_length: cfg.max_length.unwrap_or(self.lm.n_ctx),
            shard: cfg.shard,
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
        })
    }

    /// Reopens run `id`: loads the AdamW state it saved, deletes what was recorded after it, and
    /// returns the documents that stay done.
    fn resume(&self, id: i64, training: &mut Training) -> Result<HashSet<usize>> {
        let cfg = self.cfg;
        let db = self.db()?;
        let recorded = db.recorded_seqs(id)?;
        // AdamW's state after the last document is needed to go on as the original would.
        let needs_state = cfg.method.trains() && cfg.optimizer_state == OptimizerState::Carry;
        let path = db.artifact_path(id, "optimizer");
        let saved_after = match training {
            Training::Sequential(trainer)
                if needs_state && !recorded.is_empty() && path.is_file() =>
            {
                Some(trainer.load_optimizer(&path)?)
            }
            // Lanes never carry AdamW state (RunConfig refuses it): nothing to load.
            _ => None,
        };
        let point = ResumePoint::new(&recorded, needs_state, saved_after);
        let redone = db.delete_docs_from(id, point.keep_below)?;
        if redone > 0 {
            tracing::info!("run {id}: {redone} document(s) recorded after the last saved optimizer state are redone");
        }
        db.set_status(id, RunStatus::Running, None)?;
        Ok(point.done)
    }

    /// The neighbours of `vector`, nearest first, or as SIFT picks them.
    pub(super) fn neighbors(&self, vector: &[f32], exclude: &str) -> Result<Vec<Neighbor>> {
        let cfg = self.cfg;
        let k = needed(cfg);
        let retrieval = Retrieval {
            k,
            mode: cfg.search_mode(),
            max_distance: cfg.distance_threshold,
            exclude_id: Some(exclude.to_string()),
            split: Some(cfg.neighbor_split.clone()),
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
        let picks = select::sift(vector, &embeddings, cfg.neighbors, &cfg.sift());
        Ok(picks.iter().map(|p| candidates[p.index].clone()).collect())
    }

    /// Does every planned document not in `done`, recording each.
    fn documents(
        &self,
        trainer: &mut Trainer,
        plan: &[PlannedDoc],
        run_id: i64,
        done: &mut HashSet<usize>,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let cfg = self.cfg;
        let state_path = Db::artifact_path_of(self.db_path, run_id, "optimizer");
        // interpolate's α, chosen once per task: (task_index, α).
        let mut alpha: Option<(usize, Alpha)> = None;
        for (i, doc) in plan.iter().enumerate() {
            if done.contains(&doc.seq) {
                continue;
            }
            // The original builds a new AdamW per task (a new TTTLM each), so state carries only
            // within a task; at resume the loaded state is kept unless this document starts a task.
            let starts_task = i == 0 || plan[i - 1].task_index != doc.task_index;
            if starts_task && cfg.method.trains() {
                trainer.reset_optimizer();
            }
            tch::manual_seed(doc.seed(cfg.seed));
            let retrieved = self.retrieve(doc)?;
            let (text, neighbors) = (&retrieved.text, &retrieved.neighbors);
            let mut run = DocRun {
                cfg,
                lm: self.lm,
                doc,
                on_event: &mut *on_event,
            };
            let mut outcome = match cfg.method {
                Method::TttNn => run.ttt_nn(trainer, text, neighbors)?,
                Method::DynamicEval => run.dynamic_eval(trainer, text)?,
                Method::InContext => in_context(cfg, self.lm, text, neighbors)?,
                Method::Interpolate => {
                    let a = match alpha {
                        Some((task, a)) if task == doc.task_index => a,
                        _ => self.choose_alpha(&doc.set_name)?,
                    };
                    alpha = Some((doc.task_index, a));
                    interpolate(cfg, self.lm, text, neighbors, a)?
                }
                Method::None => Outcome::scored(self.lm, text)?,
            };
            if cfg.method.trains() {
                trainer.finish_document(cfg.optimizer_state);
            }
            self.record(run_id, doc, &retrieved, &mut outcome, on_event)?;
            if cfg.method.trains() && cfg.optimizer_state == OptimizerState::Carry {
                if let Some(dir) = state_path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                }
                trainer.save_optimizer(&state_path, doc.seq as i64)?;
            }
            done.insert(doc.seq);
        }
        Ok(())
    }

    /// A planned document's text and neighbours.
    pub(super) fn retrieve(&self, doc: &PlannedDoc) -> Result<Retrieved> {
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

    /// Completes a document's outcome as every method needs, records it and reports it.
    pub(super) fn record(
        &self,
        run_id: i64,
        doc: &PlannedDoc,
        retrieved: &Retrieved,
        outcome: &mut Outcome,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<()> {
        let cfg = self.cfg;
        let (text, neighbors) = (&retrieved.text, &retrieved.neighbors);
        // Fewer neighbours than k: adaptive SIFT stopped (activeft trains on what it picked,
        // possibly nothing), or in-context and interpolate kept only those within the
        // distance threshold (the original scores the document with whatever survived, even
        // none, and averages over every document). The model stays as it is, so the
        // curve's end point at k is its last state and the document counts. TTT-NN with
        // nearest neighbours keeps the original's rule: a short curve drops the document.
        let scores_what_survived =
            cfg.select.is_sift() || matches!(cfg.method, Method::InContext | Method::Interpolate);
        if scores_what_survived {
            // Every evaluation point past the last neighbour holds that last state, so the
            // curve (bpb_vs_k) averages the same documents at every k.
            let &(k, last) = outcome.curve.last().expect("the curve starts at k = 0");
            let points =
                (k + 1..=cfg.neighbors).filter(|&p| cfg.eval_at.includes(p, cfg.neighbors));
            outcome.curve.extend(points.map(|p| (p, last)));
            outcome.complete = true;
        }
        if cfg.method.uses_neighbors() {
            // The leakage audit: how much of each neighbour is the document itself.
            let grams = NGrams::new(text);
            for r in &mut outcome.neighbors {
                let nb = &neighbors[r.rank - 1];
                r.jaccard13 = Some(grams.jaccard(&NGrams::new(&nb.text)));
            }
        }
        let record = outcome.record(doc, retrieved.retrieval_s);
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
