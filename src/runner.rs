//! One TTT-NN run, as the original's `eval_tttlm.py` does it (spec §2–§3), recorded in DuckDB:
//! pick each task's test documents, and for each one retrieve its neighbours, evaluate it, train
//! on the neighbours nearest first (evaluating after each, or at `eval_at` points), reset the
//! weights, and record the document in one transaction. A killed run resumes where it stopped.
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::{self, DocScore, Mixture};
use crate::lm::{Device, LanguageModel, Precision};
use crate::records::{Db, DocRecord, NeighborRecord, NewRun};
use crate::select::{self, Selection, Sift};
use crate::store::{Neighbor, Retrieval, SearchMode, Store};
use crate::task::{self, Shard, Task};
use crate::ttt::{OptimizerState, TextTraining, TrainConfig, Trainer};

/// What a run does with each document's neighbours (spec §2, §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Test-time training on the neighbours, nearest first (the paper).
    #[default]
    TttNn,
    /// Neighbour text in the model's window before the document, nearest next to it.
    InContext,
    /// kNN-LM style: the neighbours' unigram distribution mixed into the LM's with weight α.
    Interpolate,
    /// Dynamic evaluation: train on the document's own prefix `neighbors` times, score the rest.
    DynamicEval,
    /// The base model only (k = 0).
    None,
}

impl Method {
    /// The name recorded in `runs.method`.
    pub fn name(self) -> &'static str {
        match self {
            Method::TttNn => "ttt-nn",
            Method::InContext => "in-context",
            Method::Interpolate => "interpolate",
            Method::DynamicEval => "dynamic-eval",
            Method::None => "none",
        }
    }
}

/// How in-context neighbours are laid out in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContextOrder {
    /// Farthest first, nearest right before the document; what does not fit is cut from the
    /// farthest end (what the paper describes).
    #[default]
    NearestLast,
    /// The original code's behaviour: nearest first, then left-truncated, which keeps the tail of
    /// the farthest neighbours (spec §4.1); for reproducing its numbers.
    Original,
}

/// The α grid the original searched for `interpolate` (0, 0.01, …, 0.19).
pub const ALPHA_GRID: [f64; 20] = [
    0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.11, 0.12, 0.13, 0.14, 0.15,
    0.16, 0.17, 0.18, 0.19,
];

/// α when a task has no held-out documents: the paper's pile_all choice (2% NN, 98% LM).
pub const DEFAULT_ALPHA: f64 = 0.02;

/// After which neighbours the document is evaluated (k = 0 and the last neighbour always are).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum EvalAt {
    /// After every neighbour, as the original (51 points for k = 50).
    #[default]
    All,
    /// Only after these numbers of neighbours: cheaper, same end point.
    Points(Vec<usize>),
}

impl EvalAt {
    /// Whether to evaluate after the `k`-th neighbour of `last`.
    pub fn includes(&self, k: usize, last: usize) -> bool {
        k == 0
            || k == last
            || match self {
                EvalAt::All => true,
                EvalAt::Points(p) => p.contains(&k),
            }
    }
}

impl FromStr for EvalAt {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.trim() == "all" {
            return Ok(EvalAt::All);
        }
        let mut points = s
            .split(',')
            .map(|p| {
                p.trim().parse::<usize>().map_err(|_| {
                    format!("`{p}` is not a number of neighbours (write `all` or e.g. 1,2,5,10)")
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        points.sort_unstable();
        points.dedup();
        Ok(EvalAt::Points(points))
    }
}

impl fmt::Display for EvalAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalAt::All => f.write_str("all"),
            EvalAt::Points(p) => {
                let s: Vec<String> = p.iter().map(|k| k.to_string()).collect();
                f.write_str(&s.join(","))
            }
        }
    }
}

impl From<EvalAt> for String {
    fn from(e: EvalAt) -> String {
        e.to_string()
    }
}

impl TryFrom<String> for EvalAt {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

/// Every setting of a run, resolved; stored as the run's config JSON so `--resume` redoes exactly it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// Run name (free text).
    pub name: Option<String>,
    /// LanceDB corpus store.
    pub store: PathBuf,
    /// Encoder the store was embedded with (checked against the store's dimension).
    pub encoder: Option<PathBuf>,
    /// HF model directory.
    pub model: PathBuf,
    /// lm-eval task (`pile_github`, `pile_all`).
    pub task: Task,
    /// Neighbours per document (the paper's k = 50).
    pub neighbors: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// Tokens per training chunk; `None` is the model's context length, as the paper.
    pub max_length: Option<usize>,
    /// Split the test documents come from.
    pub split: String,
    /// Split neighbours are retrieved from (the original indexes only training documents).
    pub neighbor_split: String,
    /// Fraction of each task's shuffled test documents evaluated (0.2).
    pub val_portion: f64,
    /// Seed of the shuffle (1216).
    pub seed: u64,
    /// Evaluation points.
    pub eval_at: EvalAt,
    /// AdamW state across documents: carried (original) or reset per document.
    pub optimizer_state: OptimizerState,
    /// Drop neighbours farther than this (unsquared L2; the original's 4.0).
    pub distance_threshold: Option<f32>,
    /// IVF-PQ partitions to probe; `None` searches exactly, as the paper's flat index.
    pub nprobes: Option<usize>,
    /// Re-rank `refine_factor`·k IVF-PQ candidates exactly.
    pub refine_factor: Option<u32>,
    /// At most this many documents per task (taken from the front of the shuffled subset).
    pub limit_docs: Option<usize>,
    /// This worker's share of the documents.
    pub shard: Shard,
    /// Where the LM runs.
    pub device: Device,
    /// Weights precision.
    pub precision: Precision,
    /// What to do with the neighbours.
    #[serde(default)]
    pub method: Method,
    /// How neighbours are chosen from the retrieved candidates.
    #[serde(default)]
    pub select: Selection,
    /// SIFT: candidates retrieved to choose from.
    #[serde(default = "default_sift_candidates")]
    pub sift_candidates: usize,
    /// SIFT: λ and the adaptive stopping rule.
    #[serde(default)]
    pub sift: Sift,
    /// interpolate: a fixed α; `None` chooses it per task on held-out documents.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// interpolate: held-out documents per task to choose α on.
    #[serde(default = "default_alpha_docs")]
    pub alpha_docs: usize,
    /// in-context: layout of the neighbours in the window.
    #[serde(default)]
    pub in_context_order: ContextOrder,
}

fn default_sift_candidates() -> usize {
    200
}

fn default_alpha_docs() -> usize {
    20
}

impl RunConfig {
    fn search_mode(&self) -> SearchMode {
        match self.nprobes {
            None => SearchMode::Exact,
            Some(nprobes) => SearchMode::Indexed {
                nprobes,
                refine_factor: self.refine_factor,
            },
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(Error::BadSetting {
                field: field.into(),
                message,
            })
        };
        if !(self.val_portion > 0.0 && self.val_portion <= 1.0) {
            return bad(
                "val_portion",
                format!("{} is not in (0, 1]", self.val_portion),
            );
        }
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return bad("lr", format!("{} is not a learning rate", self.lr));
        }
        if let Some(n) = self.max_length.filter(|&n| n < 2) {
            return bad("max_length", format!("{n} leaves no next token to predict"));
        }
        if let Some(a) = self.alpha {
            if !(0.0..=1.0).contains(&a) {
                return bad("alpha", format!("{a} is not in [0, 1]"));
            }
        }
        if self.select == Selection::Sift && self.sift_candidates == 0 {
            return bad(
                "sift_candidates",
                "SIFT needs candidates to choose from".into(),
            );
        }
        if let EvalAt::Points(p) = &self.eval_at {
            if let Some(k) = p.iter().find(|&&k| k > self.neighbors) {
                return bad(
                    "eval_at",
                    format!("{k} is more than --neighbors {}", self.neighbors),
                );
            }
        }
        Ok(())
    }
}

/// One document of the plan: which task, where in its subset, and in which order this run does it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedDoc {
    /// Evaluation order within this run (shard).
    pub seq: usize,
    /// Index of the task in the run's task list (tasks get fresh AdamW state, as the original).
    pub task_index: usize,
    /// lm-eval task name.
    pub task: String,
    /// Set name.
    pub set_name: String,
    /// Index in the task's shuffled test subset.
    pub position: usize,
    /// Stored document id.
    pub doc_id: String,
}

/// The documents a run evaluates, in order: per task (sorted by name), the shuffled subset cut to
/// `limit_docs`, then this shard's share.
pub async fn plan(store: &Store, cfg: &RunConfig) -> Result<Vec<PlannedDoc>> {
    let all = store.documents_of(&cfg.split, None).await?;
    let mut sets: Vec<String> = all.iter().map(|d| d.set_name.clone()).collect();
    sets.sort();
    sets.dedup();
    let tasks: Vec<String> = match &cfg.task {
        Task::All => sets.clone(),
        Task::Set(set) => {
            if !sets.contains(set) {
                return Err(Error::BadSetting {
                    field: "task".into(),
                    message: format!(
                        "the store has no `{}` documents of set `{set}`; sets there: {}",
                        cfg.split,
                        if sets.is_empty() {
                            "none (ingest test files with --split test)".into()
                        } else {
                            sets.join(", ")
                        }
                    ),
                });
            }
            vec![set.clone()]
        }
    };
    let mut tasks: Vec<(String, String)> = tasks
        .into_iter()
        .map(|set| (Task::name_of_set(&set), set))
        .collect();
    tasks.sort();
    let mut out = Vec::new();
    for (task_index, (task, set)) in tasks.iter().enumerate() {
        let docs: Vec<_> = all.iter().filter(|d| &d.set_name == set).collect();
        let mut subset = task::test_subset(docs.len(), cfg.val_portion, cfg.seed);
        if let Some(limit) = cfg.limit_docs {
            subset.truncate(limit);
        }
        for (position, &i) in subset.iter().enumerate() {
            if cfg.shard.owns(position) {
                out.push(PlannedDoc {
                    seq: out.len(),
                    task_index,
                    task: task.clone(),
                    set_name: set.clone(),
                    position,
                    doc_id: docs[i].id.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// What a run reports while it works.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// The plan is known: `total` documents, `done` of them already recorded.
    Started {
        run_id: i64,
        total: usize,
        done: usize,
    },
    /// Trained on one neighbour (and evaluated after it if `bits_per_byte` is set).
    Neighbor {
        doc: &'a PlannedDoc,
        rank: usize,
        record: &'a NeighborRecord,
        bits_per_byte: Option<f64>,
    },
    /// A document is recorded.
    Document {
        doc: &'a PlannedDoc,
        record: &'a DocRecord,
        bpb_before: f64,
        bpb_after: f64,
    },
}

/// Bits per byte of a log-likelihood over `bytes` (spec §3.2).
pub fn bits_per_byte(loglik: f64, bytes: u64) -> f64 {
    -loglik / bytes.max(1) as f64 / std::f64::consts::LN_2
}

fn optimizer_path(db: &Path, run_id: i64) -> PathBuf {
    let mut dir = db.as_os_str().to_owned();
    dir.push(".optimizer");
    PathBuf::from(dir).join(format!("run-{run_id}.safetensors"))
}

fn blake3_of(files: &[PathBuf]) -> Result<String> {
    let mut h = blake3::Hasher::new();
    for f in files {
        let file = std::fs::File::open(f).map_err(|e| Error::io(f, e))?;
        h.update_reader(file).map_err(|e| Error::io(f, e))?;
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

/// Content hash of a model directory's weights and config (first 16 hex digits of BLAKE3).
pub fn model_hash(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.ends_with(".safetensors") || name == "config.json" || name == "tokenizer.json"
        })
        .collect();
    files.sort();
    blake3_of(&files)
}

/// Runs (or, with `resume`, continues) a TTT-NN run recorded in `db`; returns its id.
pub fn run(
    cfg: &RunConfig,
    db: &Db,
    resume: Option<i64>,
    on_event: &mut dyn FnMut(Event),
) -> Result<i64> {
    cfg.validate()?;
    let rt = tokio::runtime::Runtime::new()
        .map_err(|e| Error::Internal(format!("tokio runtime: {e}")))?;
    let store = rt.block_on(Store::open(&cfg.store))?;
    let encoder_provider = match &cfg.encoder {
        Some(dir) => {
            let encoder = crate::embed::Encoder::load(dir, crate::embed::Device::Cpu)?;
            if encoder.dim() != store.dim() {
                return Err(Error::bad_file(
                    dir,
                    format!(
                        "encoder embeds in {} dimensions, the store {} holds {}",
                        encoder.dim(),
                        cfg.store.display(),
                        store.dim()
                    ),
                ));
            }
            Some(encoder.provider().to_string())
        }
        None => None,
    };
    let plan = rt.block_on(plan(&store, cfg))?;
    let model_hash = model_hash(&cfg.model)?;

    let lm = LanguageModel::load(&cfg.model, cfg.device)?;
    // The trainer moves the fp32 weights into flat buffers; bf16 is mixed precision (ttt::adamw).
    let mut trainer = Trainer::new(
        &lm,
        TrainConfig {
            lr: cfg.lr,
            max_length: cfg.max_length.unwrap_or(lm.n_ctx),
            precision: cfg.precision,
            ..Default::default()
        },
    )?;

    let (run_id, mut done) = match resume {
        None => {
            let config = serde_json::to_string(cfg)
                .map_err(|e| Error::Internal(format!("serializing the run config: {e}")))?;
            let id = db.create_run(&NewRun {
                name: cfg.name.clone(),
                method: cfg.method.name().into(),
                selection: format!("{:?}", cfg.select).to_lowercase(),
                task: cfg.task.to_string(),
                model: cfg.model.display().to_string(),
                model_hash,
                encoder: cfg.encoder.as_ref().map(|p| p.display().to_string()),
                store: cfg.store.display().to_string(),
                store_version: rt.block_on(store.version())? as i64,
                neighbors: cfg.neighbors as i64,
                lr: cfg.lr,
                max_length: cfg.max_length.unwrap_or(lm.n_ctx) as i64,
                device: format!("{:?}", cfg.device).to_lowercase(),
                encoder_provider,
                config,
                split: cfg.split.clone(),
                val_portion: cfg.val_portion,
                seed: cfg.seed as i64,
                eval_at: cfg.eval_at.to_string(),
                optimizer_state: format!("{:?}", cfg.optimizer_state).to_lowercase(),
                distance_threshold: cfg.distance_threshold.map(f64::from),
                search: if cfg.nprobes.is_some() {
                    "ivf-pq"
                } else {
                    "exact"
                }
                .into(),
                nprobes: cfg.nprobes.map(|n| n as i64),
                refine_factor: cfg.refine_factor.map(i64::from),
                limit_docs: cfg.limit_docs.map(|n| n as i64),
                shard_index: cfg.shard.index as i64,
                shard_count: cfg.shard.count as i64,
                precision: format!("{:?}", cfg.precision).to_lowercase(),
                alpha: cfg.alpha,
                alpha_docs: (cfg.method == Method::Interpolate).then_some(cfg.alpha_docs as i64),
                in_context_order: (cfg.method == Method::InContext)
                    .then(|| format!("{:?}", cfg.in_context_order).to_lowercase()),
                sift_candidates: (cfg.select == Selection::Sift)
                    .then_some(cfg.sift_candidates as i64),
                sift_lambda: (cfg.select == Selection::Sift).then_some(cfg.sift.lambda),
                sift_adaptive: cfg.sift.adaptive.filter(|_| cfg.select == Selection::Sift),
            })?;
            (id, std::collections::HashSet::new())
        }
        Some(id) => {
            let recorded: Vec<i64> = db.recorded_seqs(id)?;
            let mut keep_below = i64::MAX;
            let trains = matches!(cfg.method, Method::TttNn | Method::DynamicEval);
            if trains && cfg.optimizer_state == OptimizerState::Carry && !recorded.is_empty() {
                // AdamW's state after the last document is needed to go on as the original would;
                // documents recorded after the last saved state are redone.
                let path = optimizer_path(db.path(), id);
                keep_below = if path.is_file() {
                    trainer.load_optimizer(&path)? + 1
                } else {
                    0
                };
            }
            let redone = db.delete_docs_from(id, keep_below)?;
            if redone > 0 {
                tracing::info!("run {id}: {redone} document(s) recorded after the last saved optimizer state are redone");
            }
            db.set_run_status(id, "running", None)?;
            let done = recorded
                .into_iter()
                .filter(|&s| s < keep_below)
                .map(|s| s as usize)
                .collect();
            (id, done)
        }
    };
    on_event(Event::Started {
        run_id,
        total: plan.len(),
        done: done.len(),
    });
    let result = run_documents(
        cfg,
        db,
        &rt,
        &store,
        &lm,
        &mut trainer,
        &plan,
        run_id,
        &mut done,
        on_event,
    );
    match &result {
        Ok(()) => {
            db.set_run_status(run_id, "finished", None)?;
            let state = optimizer_path(db.path(), run_id);
            if state.exists() {
                std::fs::remove_file(&state).map_err(|e| Error::io(&state, e))?;
            }
        }
        Err(e) => db.set_run_status(run_id, "failed", Some(&e.to_string()))?,
    }
    result.map(|_| run_id)
}

/// What scoring one document produced, whatever the method.
struct Outcome {
    /// What was scored (the whole document, or the remainder under dynamic evaluation).
    score: DocScore,
    curve: Vec<(usize, f64)>,
    neighbors: Vec<NeighborRecord>,
    train_s: f64,
    eval_s: f64,
    steps: usize,
    skipped: usize,
    complete: bool,
    alpha: Option<(f64, &'static str)>,
    context_tokens: Option<usize>,
    context_fallback: Option<bool>,
}

impl Outcome {
    /// Starts a document's outcome with the base model's score of `text` (k = 0), timed.
    fn scored(lm: &LanguageModel, text: &str) -> Result<Self> {
        let t = Instant::now();
        let score = eval::loglikelihood(lm, text)?;
        Ok(Self::new(score, t.elapsed().as_secs_f64()))
    }

    fn new(score: DocScore, eval_s: f64) -> Self {
        Outcome {
            curve: vec![(0, score.loglik)],
            score,
            neighbors: Vec::new(),
            train_s: 0.0,
            eval_s,
            steps: 0,
            skipped: 0,
            complete: true,
            alpha: None,
            context_tokens: None,
            context_fallback: None,
        }
    }
}

/// Everything a document's scoring needs.
struct Ctx<'a> {
    cfg: &'a RunConfig,
    rt: &'a tokio::runtime::Runtime,
    store: &'a Store,
    lm: &'a LanguageModel,
}

/// The mixture distribution of the `interpolate` baseline: the neighbours' unigram distributions
/// weighted by softmax(−distance) (spec §4.2).
fn knn_distribution(neighbors: &[Neighbor], unigrams: &[tch::Tensor]) -> tch::Tensor {
    let max = neighbors
        .iter()
        .map(|n| -f64::from(n.distance))
        .fold(f64::MIN, f64::max);
    let w: Vec<f64> = neighbors
        .iter()
        .map(|n| (-f64::from(n.distance) - max).exp())
        .collect();
    let z: f64 = w.iter().sum();
    let mut dist = unigrams[0].zeros_like();
    for (u, w) in unigrams.iter().zip(&w) {
        dist += u * (w / z);
    }
    dist
}

impl Ctx<'_> {
    /// The neighbours of `vector`, nearest first, or as SIFT picks them.
    fn neighbors(&self, vector: &[f32], exclude: &str) -> Result<Vec<Neighbor>> {
        let cfg = self.cfg;
        let k = match cfg.select {
            Selection::Nn => cfg.neighbors,
            Selection::Sift => cfg.sift_candidates.max(cfg.neighbors),
        };
        let candidates = self.rt.block_on(self.store.retrieve(
            vector,
            &Retrieval {
                k,
                mode: cfg.search_mode(),
                max_distance: cfg.distance_threshold,
                exclude_id: Some(exclude.to_string()),
                split: Some(cfg.neighbor_split.clone()),
            },
        ))?;
        Ok(match cfg.select {
            Selection::Nn => candidates,
            Selection::Sift => {
                let embeddings: Vec<Vec<f32>> =
                    candidates.iter().map(|c| c.embedding.clone()).collect();
                let picks = select::sift(vector, &embeddings, cfg.neighbors, &cfg.sift);
                picks.iter().map(|p| candidates[p.index].clone()).collect()
            }
        })
    }

    fn neighbor_record(rank: usize, nb: &Neighbor) -> NeighborRecord {
        NeighborRecord {
            rank,
            neighbor_id: nb.id.clone(),
            distance: f64::from(nb.distance),
            ..Default::default()
        }
    }

    /// Each neighbour's unigram distribution over the LM's vocabulary (spec §4.2).
    fn unigrams(&self, neighbors: &[Neighbor]) -> Result<Vec<tch::Tensor>> {
        neighbors
            .iter()
            .map(|nb| {
                Ok(eval::unigram(
                    &self.lm.encode(&nb.text)?,
                    self.lm.vocab_size,
                ))
            })
            .collect()
    }

    /// interpolate's α for a task: fixed, or the best of [`ALPHA_GRID`] on up to `alpha_docs`
    /// held-out documents (the task's test documents outside the evaluated subset). The original
    /// picked it per task on the test set itself, an oracle.
    fn choose_alpha(&self, set_name: &str) -> Result<(f64, &'static str)> {
        if let Some(a) = self.cfg.alpha {
            return Ok((a, "fixed"));
        }
        let docs = self
            .rt
            .block_on(self.store.documents_of(&self.cfg.split, Some(set_name)))?;
        let order = task::shuffled(docs.len(), self.cfg.seed);
        let held_out = &order[task::subset_size(docs.len(), self.cfg.val_portion)..];
        let held_out = &held_out[..held_out.len().min(self.cfg.alpha_docs)];
        if held_out.is_empty() {
            tracing::warn!(
                "{set_name}: no held-out documents to choose α on; using {DEFAULT_ALPHA}"
            );
            return Ok((DEFAULT_ALPHA, "default"));
        }
        let mut totals = vec![0.0; ALPHA_GRID.len()];
        for &i in held_out {
            let Some((vector, text)) = self.rt.block_on(self.store.document(&docs[i].id))? else {
                continue;
            };
            let neighbors = self.neighbors(&vector, &docs[i].id)?;
            if neighbors.is_empty() {
                continue;
            }
            let knn = knn_distribution(&neighbors, &self.unigrams(&neighbors)?);
            let tokens = self.lm.encode(&text)?;
            let scores = eval::score_tokens(
                self.lm,
                &tokens,
                &[],
                Some(&Mixture {
                    distribution: &knn,
                    alphas: &ALPHA_GRID,
                }),
            )?;
            for (t, s) in totals.iter_mut().zip(scores) {
                *t += s;
            }
        }
        let best = (0..ALPHA_GRID.len()).fold(0, |b, i| if totals[i] > totals[b] { i } else { b });
        tracing::info!(
            "{set_name}: α = {} chosen on {} held-out documents",
            ALPHA_GRID[best],
            held_out.len()
        );
        Ok((ALPHA_GRID[best], "held-out"))
    }
}

#[allow(clippy::too_many_arguments)]
fn run_documents(
    cfg: &RunConfig,
    db: &Db,
    rt: &tokio::runtime::Runtime,
    store: &Store,
    lm: &LanguageModel,
    trainer: &mut Trainer,
    plan: &[PlannedDoc],
    run_id: i64,
    done: &mut std::collections::HashSet<usize>,
    on_event: &mut dyn FnMut(Event),
) -> Result<()> {
    let state_path = optimizer_path(db.path(), run_id);
    let ctx = Ctx { cfg, rt, store, lm };
    let trains = matches!(cfg.method, Method::TttNn | Method::DynamicEval);
    let mut alpha: Option<(usize, (f64, &'static str))> = None;
    for (i, doc) in plan.iter().enumerate() {
        if done.contains(&doc.seq) {
            continue;
        }
        // The original builds a new AdamW per task (a new TTTLM each), so state carries only within
        // a task; at resume the loaded state is kept unless this document starts a task.
        let starts_task = i == 0 || plan[i - 1].task_index != doc.task_index;
        if starts_task && trains {
            trainer.reset_optimizer();
        }
        // Dropout masks depend only on the document, not on what ran before in this process, so
        // a resumed or sharded run draws the same ones.
        tch::manual_seed(
            (cfg.seed as i64).wrapping_mul(1_000_003)
                + (doc.task_index as i64) * 1_000_000_007
                + doc.position as i64,
        );

        let t = Instant::now();
        let (vector, text) = rt.block_on(store.document(&doc.doc_id))?.ok_or_else(|| {
            Error::Internal(format!("document {} vanished from the store", doc.doc_id))
        })?;
        let neighbors = match cfg.method {
            Method::None | Method::DynamicEval => Vec::new(),
            _ => ctx.neighbors(&vector, &doc.doc_id)?,
        };
        let retrieval_s = t.elapsed().as_secs_f64();

        let mut outcome = match cfg.method {
            Method::TttNn => ttt_nn(&ctx, trainer, doc, &text, &neighbors, on_event)?,
            Method::DynamicEval => dynamic_eval(&ctx, trainer, doc, &text, on_event)?,
            Method::InContext => in_context(&ctx, &text, &neighbors)?,
            Method::Interpolate => {
                if alpha.map(|a| a.0) != Some(doc.task_index) {
                    alpha = Some((doc.task_index, ctx.choose_alpha(&doc.set_name)?));
                }
                let a = alpha.map(|a| a.1).unwrap_or((DEFAULT_ALPHA, "default"));
                interpolate(&ctx, &text, &neighbors, a)?
            }
            Method::None => Outcome::scored(lm, &text)?,
        };
        if cfg.select == Selection::Sift {
            // Adaptive SIFT stops when more picks would not help: the model stays as it is, so
            // the curve's end point is its last state.
            let &(k, last) = outcome.curve.last().expect("the curve starts at k = 0");
            if k != cfg.neighbors && !neighbors.is_empty() {
                outcome.curve.push((cfg.neighbors, last));
            }
            outcome.complete = !neighbors.is_empty();
        }
        if trains {
            trainer.finish_document(cfg.optimizer_state);
        }

        let record = DocRecord {
            doc_id: doc.doc_id.clone(),
            task: doc.task.clone(),
            set_name: doc.set_name.clone(),
            position: doc.position,
            seq: doc.seq,
            bytes: outcome.score.bytes,
            words: outcome.score.words,
            tokens: outcome.score.tokens as usize,
            neighbors_used: outcome.neighbors.len(),
            complete: outcome.complete,
            retrieval_s,
            train_s: outcome.train_s,
            eval_s: outcome.eval_s,
            train_steps: outcome.steps,
            skipped_chunks: outcome.skipped,
            alpha: outcome.alpha.map(|a| a.0),
            alpha_source: outcome.alpha.map(|a| a.1.to_string()),
            context_tokens: outcome.context_tokens,
            context_fallback: outcome.context_fallback,
        };
        db.record_doc(run_id, &record, &outcome.curve, &outcome.neighbors)?;
        if trains && cfg.optimizer_state == OptimizerState::Carry {
            if let Some(dir) = state_path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            trainer.save_optimizer(&state_path, doc.seq as i64)?;
        }
        done.insert(doc.seq);
        let before = outcome.curve[0].1;
        let after = outcome.curve.last().map(|c| c.1).unwrap_or(before);
        on_event(Event::Document {
            doc,
            record: &record,
            bpb_before: bits_per_byte(before, outcome.score.bytes),
            bpb_after: bits_per_byte(after, outcome.score.bytes),
        });
    }
    Ok(())
}

/// Books one training pass (on a neighbour, or a dynamic-evaluation iteration) into `out`, and
/// evaluates `text` after it when its rank is an evaluation point.
fn after_step(
    ctx: &Ctx,
    out: &mut Outcome,
    doc: &PlannedDoc,
    (mut record, trained, train_s): (NeighborRecord, &TextTraining, f64),
    last: usize,
    text: &str,
    on_event: &mut dyn FnMut(Event),
) -> Result<()> {
    out.train_s += train_s;
    out.steps += trained.steps;
    out.skipped += trained.skipped_short + trained.skipped_nonfinite;
    record.tokens = trained.tokens;
    record.chunks = trained.chunks;
    record.train_loss = Some(trained.mean_loss);
    record.train_s = train_s;
    let rank = record.rank;
    let mut bpb = None;
    if ctx.cfg.eval_at.includes(rank, last) {
        let t = Instant::now();
        let score = eval::loglikelihood(ctx.lm, text)?;
        let s = t.elapsed().as_secs_f64();
        out.eval_s += s;
        record.eval_s = Some(s);
        out.curve.push((rank, score.loglik));
        bpb = Some(bits_per_byte(score.loglik, score.bytes));
    }
    on_event(Event::Neighbor {
        doc,
        rank,
        record: &record,
        bits_per_byte: bpb,
    });
    out.neighbors.push(record);
    Ok(())
}

/// TTT-NN: train on each neighbour in order, evaluating after each (or at `eval_at` points).
fn ttt_nn(
    ctx: &Ctx,
    trainer: &mut Trainer,
    doc: &PlannedDoc,
    text: &str,
    neighbors: &[Neighbor],
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome> {
    let (cfg, lm) = (ctx.cfg, ctx.lm);
    let mut out = Outcome::scored(lm, text)?;
    let last = neighbors.len();
    for (r, nb) in neighbors.iter().enumerate() {
        let t = Instant::now();
        let trained = trainer.train_on_text(lm, &nb.text)?;
        let train_s = t.elapsed().as_secs_f64();
        let record = Ctx::neighbor_record(r + 1, nb);
        after_step(
            ctx,
            &mut out,
            doc,
            (record, &trained, train_s),
            last,
            text,
            on_event,
        )?;
    }
    // The original keeps only documents with the full curve (spec §2, failure handling).
    out.complete = neighbors.len() == cfg.neighbors;
    Ok(out)
}

/// Dynamic evaluation (spec §4.3): the split protocol's prefix is trained on `neighbors` times
/// (one step per max-length chunk each time) and the remainder evaluated, before and after.
fn dynamic_eval(
    ctx: &Ctx,
    trainer: &mut Trainer,
    doc: &PlannedDoc,
    text: &str,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome> {
    let (cfg, lm) = (ctx.cfg, ctx.lm);
    let (prefix, rest) = eval::split_text(lm, text)?;
    let prefix_tokens = lm.encode(&prefix)?;
    let mut out = Outcome::scored(lm, &rest)?;
    for iteration in 1..=cfg.neighbors {
        let t = Instant::now();
        let trained = trainer.train_on_tokens(lm, &prefix_tokens)?;
        let train_s = t.elapsed().as_secs_f64();
        let record = NeighborRecord {
            rank: iteration,
            neighbor_id: doc.doc_id.clone(),
            ..Default::default()
        };
        after_step(
            ctx,
            &mut out,
            doc,
            (record, &trained, train_s),
            cfg.neighbors,
            &rest,
            on_event,
        )?;
    }
    Ok(out)
}

/// The window context of the first `k` neighbours' tokens, at most `budget` tokens.
fn context_tokens(tokens: &[Vec<i64>], k: usize, budget: usize, order: ContextOrder) -> Vec<i64> {
    let seq: Vec<i64> = match order {
        ContextOrder::NearestLast => tokens[..k].iter().rev().flatten().copied().collect(),
        ContextOrder::Original => tokens[..k].iter().flatten().copied().collect(),
    };
    seq[seq.len().saturating_sub(budget)..].to_vec()
}

/// Records each neighbour and, at every `eval_at` number of neighbours k, the document's score
/// with the first k of them (the methods that use neighbours without training on them).
fn score_at_points(
    ctx: &Ctx,
    neighbors: &[Neighbor],
    out: &mut Outcome,
    mut score: impl FnMut(usize) -> Result<f64>,
) -> Result<()> {
    let last = neighbors.len();
    for (r, nb) in neighbors.iter().enumerate() {
        let k = r + 1;
        let mut record = Ctx::neighbor_record(k, nb);
        if ctx.cfg.eval_at.includes(k, last) {
            let t = Instant::now();
            let ll = score(k)?;
            let s = t.elapsed().as_secs_f64();
            out.eval_s += s;
            record.eval_s = Some(s);
            out.curve.push((k, ll));
        }
        out.neighbors.push(record);
    }
    Ok(())
}

/// In-context neighbours (spec §4.1): the document scored after as much neighbour text as fits
/// its window, at each `eval_at` number of neighbours. A document longer than the window is scored
/// alone (recorded as a fallback), as the original does.
fn in_context(ctx: &Ctx, text: &str, neighbors: &[Neighbor]) -> Result<Outcome> {
    let (cfg, lm) = (ctx.cfg, ctx.lm);
    let mut out = Outcome::scored(lm, text)?;
    let tokens = lm.encode(text)?;
    let fits = !tokens.is_empty() && tokens.len() <= lm.n_ctx;
    let nb_tokens: Vec<Vec<i64>> = neighbors
        .iter()
        .map(|n| lm.encode(&n.text))
        .collect::<Result<_>>()?;
    let budget = (lm.n_ctx + 1).saturating_sub(tokens.len());
    let (base, mut used) = (out.score.loglik, 0);
    score_at_points(ctx, neighbors, &mut out, |k| {
        Ok(if fits {
            let context = context_tokens(&nb_tokens, k, budget, cfg.in_context_order);
            used = context.len();
            eval::score_tokens(lm, &tokens, &context, None)?[0]
        } else {
            base
        })
    })?;
    for r in &mut out.neighbors {
        r.tokens = nb_tokens[r.rank - 1].len();
    }
    out.complete = neighbors.len() == cfg.neighbors;
    out.context_fallback = Some(!fits);
    out.context_tokens = Some(used);
    Ok(out)
}

/// The interpolate baseline (spec §4.2) at each `eval_at` number of neighbours, with α fixed per task.
fn interpolate(
    ctx: &Ctx,
    text: &str,
    neighbors: &[Neighbor],
    alpha: (f64, &'static str),
) -> Result<Outcome> {
    let (cfg, lm) = (ctx.cfg, ctx.lm);
    let mut out = Outcome::scored(lm, text)?;
    let tokens = lm.encode(text)?;
    let unigrams = ctx.unigrams(neighbors)?;
    score_at_points(ctx, neighbors, &mut out, |k| {
        let knn = knn_distribution(&neighbors[..k], &unigrams[..k]);
        let mixture = Mixture {
            distribution: &knn,
            alphas: &[alpha.0],
        };
        Ok(eval::score_tokens(lm, &tokens, &[], Some(&mixture))?[0])
    })?;
    out.complete = neighbors.len() == cfg.neighbors;
    out.alpha = Some(alpha);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_points_always_include_both_ends() {
        let e: EvalAt = "5,1,2".parse().unwrap();
        assert_eq!(e.to_string(), "1,2,5");
        assert!(e.includes(0, 7) && e.includes(2, 7) && e.includes(7, 7) && !e.includes(3, 7));
        assert!(EvalAt::All.includes(3, 7));
        assert!("1,x".parse::<EvalAt>().unwrap_err().contains("`x`"));
    }
}
