//! Paired comparisons of recorded runs (`tttnn compare`): each run against the first over the
//! documents every run completed, per task and `pile_all`, with a bootstrap interval, a
//! permutation p-value and n (`crate::stats`); and `table1 --ci`'s intervals.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

use super::{Db, Query, Rows};
use crate::error::{Error, Result};
use crate::stats::{self, Interval, RatioStratum, Resampling, Stratum};

/// One document of one run at the point its method reports (`run_points.k_reported`).
#[derive(Debug, Clone)]
struct DocPoint {
    run: i64,
    task: String,
    set_name: String,
    doc_id: String,
    bytes: i64,
    loglik: f64,
}

impl DocPoint {
    fn bits_per_byte(&self) -> f64 {
        -self.loglik / self.bytes as f64 / std::f64::consts::LN_2
    }
}

/// What is known of a compared run.
struct RunInfo {
    name: Option<String>,
    method: String,
}

impl Db {
    /// The Pile weight of each set (`pile_weights`).
    fn pile_weights(&self) -> Result<HashMap<String, f64>> {
        let mut stmt = self
            .conn
            .prepare("SELECT set_name, weight FROM pile_weights")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    fn run_info(&self, run: i64) -> Result<RunInfo> {
        self.conn
            .query_row("SELECT name, method FROM runs WHERE id = ?", [run], |r| {
                Ok(RunInfo {
                    name: r.get(0)?,
                    method: r.get(1)?,
                })
            })
            .map_err(|e| match e {
                duckdb::Error::QueryReturnedNoRows => {
                    Error::setting("run", format!("no run {run} in {}", self.path.display()))
                }
                e => self.err(e),
            })
    }

    /// The complete documents of `runs` at their reported points.
    fn doc_points(&self, runs: &[i64]) -> Result<Vec<DocPoint>> {
        self.select_runs(runs)?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.run_id, d.task, d.set_name, d.doc_id, d.bytes, c.loglik
                 FROM docs d
                 JOIN run_points p ON p.run_id = d.run_id
                 JOIN curve c ON c.run_id = d.run_id AND c.doc_id = d.doc_id AND c.k = p.k_reported
                 WHERE d.complete AND list_contains(getvariable('runs'), d.run_id)
                 ORDER BY d.task, d.doc_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(DocPoint {
                    run: r.get(0)?,
                    task: r.get(1)?,
                    set_name: r.get(2)?,
                    doc_id: r.get(3)?,
                    bytes: r.get(4)?,
                    loglik: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Each run of `runs[1..]` against `runs[0]`, paired over the documents all of them completed:
    /// per task and `pile_all` (the tasks weighted by the Pile's sizes, as table1), the mean
    /// per-document change in bits per byte (negative: the run is better), its bootstrap
    /// interval, the sign-flip p-value and n (`crate::stats`).
    pub fn compare(&self, runs: &[i64], r: &Resampling) -> Result<Rows> {
        self.comparison(runs, r)?.to_rows()
    }

    /// [`Db::compare`]'s rows, typed (what `tttnn report --compare` draws).
    pub fn comparison(&self, runs: &[i64], r: &Resampling) -> Result<Comparison> {
        if runs.len() < 2 {
            return Err(Error::setting(
                "runs",
                "a comparison needs two runs or more: the baseline first",
            ));
        }
        let infos = runs
            .iter()
            .map(|&id| self.run_info(id))
            .collect::<Result<Vec<_>>>()?;
        // task → doc → run → point; a document counts when every run completed it.
        let mut by_task: BTreeMap<String, BTreeMap<String, HashMap<i64, DocPoint>>> =
            BTreeMap::new();
        for p in self.doc_points(runs)? {
            by_task
                .entry(p.task.clone())
                .or_default()
                .entry(p.doc_id.clone())
                .or_default()
                .insert(p.run, p);
        }
        let weights = self.pile_weights()?;
        let mut tasks = Vec::new();
        let mut strata = Vec::new();
        let mut levels = Vec::new();
        for (task, docs) in &by_task {
            let common: Vec<&HashMap<i64, DocPoint>> = docs
                .values()
                .filter(|per_run| runs.iter().all(|r| per_run.contains_key(r)))
                .collect();
            if common.is_empty() {
                continue;
            }
            for per_run in &common {
                let base = &per_run[&runs[0]];
                if let Some(other) = runs[1..]
                    .iter()
                    .map(|r| &per_run[r])
                    .find(|p| p.bytes != base.bytes)
                {
                    return Err(Error::setting(
                        "runs",
                        format!(
                            "runs {} and {} score different texts of document {} ({} and {} \
                             bytes: dynamic evaluation scores the second half): compare runs \
                             that score the same text",
                            base.run, other.run, base.doc_id, base.bytes, other.bytes
                        ),
                    ));
                }
            }
            let bpb =
                |run: i64| -> Vec<f64> { common.iter().map(|d| d[&run].bits_per_byte()).collect() };
            let base = bpb(runs[0]);
            let changes = runs[1..]
                .iter()
                .map(|&run| bpb(run).iter().zip(&base).map(|(x, a)| x - a).collect())
                .collect();
            let set = &common[0][&runs[0]].set_name;
            let weight = weights.get(set).copied();
            levels.push((weight, runs.iter().map(|&r| bpb(r)).collect::<Vec<_>>()));
            strata.push(Stratum {
                weight,
                values: changes,
            });
            tasks.push(task.clone());
        }
        if strata.is_empty() {
            return Err(Error::setting(
                "runs",
                format!("runs {runs:?} have no complete document in common"),
            ));
        }
        let paired = stats::paired(&strata, r);
        // Each run's own mean bits per byte over the same documents (weighted for pile_all).
        let level = |t: usize, run: usize| -> f64 {
            let v = &levels[t].1[run];
            v.iter().sum::<f64>() / v.len() as f64
        };
        let whole_level = |run: usize| -> Option<f64> {
            let (mut sum, mut w) = (0.0, 0.0);
            for (t, (weight, _)) in levels.iter().enumerate() {
                if let Some(weight) = weight {
                    sum += weight * level(t, run);
                    w += weight;
                }
            }
            (w > 0.0).then(|| sum / w)
        };
        let mut out = Comparison {
            rows: Vec::new(),
            resampling: *r,
        };
        let rows = tasks
            .iter()
            .enumerate()
            .map(|(t, task)| (task.as_str(), paired.strata[t].clone(), Some(t)))
            .chain(std::iter::once(("pile_all", paired.whole.clone(), None)));
        for (task, estimates, t) in rows {
            for (q, e) in estimates.iter().enumerate() {
                let Some(e) = e else { continue };
                let (a, b) = match t {
                    Some(t) => (Some(level(t, 0)), Some(level(t, q + 1))),
                    None => (whole_level(0), whole_level(q + 1)),
                };
                out.rows.push(ComparisonRow {
                    task: task.to_string(),
                    run: runs[q + 1],
                    name: infos[q + 1].name.clone(),
                    method: infos[q + 1].method.clone(),
                    baseline: runs[0],
                    estimate: *e,
                    bpb_baseline: a,
                    bpb: b,
                });
            }
        }
        Ok(out)
    }
}

/// table1's columns of bits per byte, in its order.
const TABLE1_COLUMNS: [&str; 6] = [
    "base_only",
    "in_context",
    "interpolate",
    "dynamic_eval",
    "ttt_nn",
    "ttt_nn_sift",
];

impl Db {
    /// The bundled table1 for `runs` with each column's 95% percentile bootstrap interval beside
    /// it (`COL_ci_low`, `COL_ci_high`): the column's documents (`table1_docs`) resampled within
    /// each task, bits per byte the ratio of the resample's sums as table1's, pile_all the
    /// weighted mean of the resampled tasks (`stats::ratio_interval`); rounded as table1.
    pub fn table1_with_intervals(&self, runs: &[i64], r: &Resampling) -> Result<Rows> {
        let table = self.query(Query::Table1.sql(), runs)?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT column_name, task, set_name, bits, bytes FROM table1_docs
                 ORDER BY column_name, task, doc_id",
            )
            .map_err(|e| self.err(e))?;
        // column → task → the task's set and documents (weighted below).
        let mut columns: BTreeMap<String, BTreeMap<String, (String, RatioStratum)>> =
            BTreeMap::new();
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, f64>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (column, task, set, bits, bytes) = row.map_err(|e| self.err(e))?;
            columns
                .entry(column)
                .or_default()
                .entry(task)
                .or_insert_with(|| {
                    let docs = Vec::new();
                    (set, RatioStratum { weight: None, docs })
                })
                .1
                .docs
                .push((bits, bytes as f64));
        }
        let weights = self.pile_weights()?;
        let mut intervals: HashMap<(String, String), Interval> = HashMap::new();
        for (column, tasks) in &columns {
            let strata: Vec<RatioStratum> = tasks
                .values()
                .map(|(set, stratum)| RatioStratum {
                    weight: weights.get(set).copied(),
                    docs: stratum.docs.clone(),
                })
                .collect();
            let got = stats::ratio_interval(&strata, r);
            for (task, interval) in tasks.keys().zip(got.strata) {
                if let Some(i) = interval {
                    intervals.insert((column.clone(), task.clone()), i);
                }
            }
            if let Some(i) = got.whole {
                intervals.insert((column.clone(), "pile_all".into()), i);
            }
        }
        with_intervals(&table, &intervals)
    }
}

/// `table`'s rows with `COL_ci_low` and `COL_ci_high` after each column of bits per byte, from
/// `intervals` by (column, task).
fn with_intervals(table: &Rows, intervals: &HashMap<(String, String), Interval>) -> Result<Rows> {
    let round = |x: f64| (x * 1e4).round() / 1e4;
    let mut fields = Vec::new();
    for f in table.schema.fields() {
        fields.push(f.as_ref().clone());
        if TABLE1_COLUMNS.contains(&f.name().as_str()) {
            for end in ["ci_low", "ci_high"] {
                let name = format!("{}_{end}", f.name());
                fields.push(Field::new(name, DataType::Float64, true));
            }
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let mut batches = Vec::new();
    for b in &table.batches {
        let tasks = b
            .column_by_name("task")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| Error::internal("table1 has no text column `task`"))?;
        let mut out: Vec<ArrayRef> = Vec::new();
        for (f, column) in table.schema.fields().iter().zip(b.columns()) {
            out.push(column.clone());
            if !TABLE1_COLUMNS.contains(&f.name().as_str()) {
                continue;
            }
            let of = |row: usize| {
                intervals
                    .get(&(f.name().clone(), tasks.value(row).to_string()))
                    .copied()
            };
            for end in [0, 1] {
                let values: Vec<Option<f64>> = (0..b.num_rows())
                    .map(|row| of(row).map(|i| round(if end == 0 { i.low } else { i.high })))
                    .collect();
                out.push(Arc::new(Float64Array::from(values)));
            }
        }
        batches.push(
            RecordBatch::try_new(schema.clone(), out)
                .map_err(|e| Error::arrow("table1 with intervals", e))?,
        );
    }
    Ok(Rows { schema, batches })
}

/// One row of a comparison: a run against the baseline on one task (or `pile_all`).
#[derive(Debug, Clone)]
pub struct ComparisonRow {
    /// The task, or `pile_all`.
    pub task: String,
    /// The run compared.
    pub run: i64,
    /// Its name.
    pub name: Option<String>,
    /// Its method.
    pub method: String,
    /// The baseline run.
    pub baseline: i64,
    /// The mean per-document change in bits per byte, its interval, p-value and n.
    pub estimate: stats::Estimate,
    /// The baseline's mean bits per byte over the same documents.
    pub bpb_baseline: Option<f64>,
    /// The run's.
    pub bpb: Option<f64>,
}

/// Runs compared with a baseline, paired (`Db::comparison`).
#[derive(Debug, Clone)]
pub struct Comparison {
    /// Per task then `pile_all`, each run in the order given.
    pub rows: Vec<ComparisonRow>,
    /// The resampling the intervals and p-values came from.
    pub resampling: Resampling,
}

impl Comparison {
    /// The rows as a query's result: what `tttnn sql`'s formats print.
    pub fn to_rows(&self) -> Result<Rows> {
        let r = &self.resampling;
        let f = |name: &str| Field::new(name, DataType::Float64, true);
        let i = |name: &str| Field::new(name, DataType::Int64, false);
        let schema = Arc::new(Schema::new(vec![
            Field::new("task", DataType::Utf8, false),
            i("run_id"),
            Field::new("name", DataType::Utf8, true),
            Field::new("method", DataType::Utf8, false),
            i("baseline_run"),
            i("docs"),
            f("bpb_baseline"),
            f("bpb"),
            f("change"),
            f("ci_low"),
            f("ci_high"),
            f("p_value"),
            i("resamples"),
            i("seed"),
        ]));
        let rows = &self.rows;
        let floats = |get: &dyn Fn(&ComparisonRow) -> Option<f64>| -> ArrayRef {
            Arc::new(Float64Array::from(rows.iter().map(get).collect::<Vec<_>>()))
        };
        let ints = |get: &dyn Fn(&ComparisonRow) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from(rows.iter().map(get).collect::<Vec<_>>()))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.task.as_str()).collect::<Vec<_>>(),
            )),
            ints(&|r| r.run),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.name.as_deref()).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
            )),
            ints(&|r| r.baseline),
            ints(&|r| r.estimate.n as i64),
            floats(&|r| r.bpb_baseline),
            floats(&|r| r.bpb),
            floats(&|r| Some(r.estimate.mean)),
            floats(&|r| Some(r.estimate.ci_low)),
            floats(&|r| Some(r.estimate.ci_high)),
            floats(&|r| Some(r.estimate.p_value)),
            ints(&|_| r.resamples as i64),
            ints(&|_| r.seed as i64),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::arrow("a comparison's rows", e))?;
        Ok(Rows {
            schema,
            batches: vec![batch],
        })
    }
}

/// What one trained neighbour was worth to its document (a row of the view `neighbor_gain`).
#[derive(Debug, Clone, PartialEq)]
pub struct NeighborGain {
    /// The document's task.
    pub task: String,
    /// The neighbour's stored id.
    pub neighbor_id: String,
    /// Its search rank.
    pub rank: usize,
    /// Its distance from the document (unsquared L2).
    pub distance: f64,
    /// The document's change in bits per byte across it (negative: it helped).
    pub bpb_change: f64,
}

/// What the neighbours of a run's first pass were worth (`Db::neighbor_gains`).
#[derive(Debug, Clone, Default)]
pub struct NeighborGains {
    /// Per document, its neighbours that have a gain, by rank.
    pub by_doc: HashMap<String, Vec<NeighborGain>>,
    /// Per recorded document, how many neighbours it trained in the pass.
    pub neighbors: HashMap<String, usize>,
}

impl Db {
    /// What each neighbour of `run`'s first pass was worth, per document, and how many neighbours
    /// each recorded document has in that pass (a document whose every neighbour has a gain was
    /// evaluated after each).
    pub fn neighbor_gains(&self, run: i64) -> Result<NeighborGains> {
        let mut gains: HashMap<String, Vec<NeighborGain>> = HashMap::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT doc_id, task, neighbor_id, rank, distance, bpb_change FROM neighbor_gain
                 WHERE run_id = ? AND pass = 1 ORDER BY doc_id, rank",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([run], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    NeighborGain {
                        task: r.get(1)?,
                        neighbor_id: r.get(2)?,
                        rank: r.get::<_, i64>(3)? as usize,
                        distance: r.get(4)?,
                        bpb_change: r.get(5)?,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (doc, gain) = row.map_err(|e| self.err(e))?;
            gains.entry(doc).or_default().push(gain);
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.doc_id, count(n.rank) FROM docs d
                 LEFT JOIN neighbors n ON n.run_id = d.run_id AND n.doc_id = d.doc_id AND n.pass = 1
                 WHERE d.run_id = ? GROUP BY d.doc_id",
            )
            .map_err(|e| self.err(e))?;
        let counts = stmt
            .query_map([run], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as usize))
            })
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))?;
        Ok(NeighborGains {
            by_doc: gains,
            neighbors: counts,
        })
    }
}
