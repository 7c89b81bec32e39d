//! `tttnn sweep`: a grid of `tttnn run` settings from one file, each point one named run in one
//! results database. Points whose retrieval agrees share one neighbour table (at the largest k
//! among them, `--neighbors-from`), so the store is searched once per document, not once per
//! point; a re-run skips finished points and resumes unfinished ones; `--shard I/N` splits the
//! points among workers (each also computing its share of every table, then waiting for the
//! others'); at the end the points are compared with the baseline, paired over their documents
//! (`records::Db::compare`). docs/runner.md, "Sweeps".
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::event::Event;
use super::neighbors::{self, needed, ExactSearch, NeighborsConfig};
use super::plan;
use super::session;
use super::settings::{Method, NeighborSearch, RunConfig, SettingsFile, TestDocs};
use crate::error::{Error, Result};
use crate::records::{Db, Rows, RunStatus};
use crate::select::SiftPool;
use crate::stats::Resampling;
use crate::store::{self, NeighborTable, Product, Slice, Store};
use crate::task::Shard;

/// A sweep file: the runs' settings (`[base]`, the `--config` schema), the settings varied
/// (`[grid]`, each a list of values), the sweep's name, database and baseline point.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The sweep's name: its runs are named `NAME/key=value,...` (default: the file's stem).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// The results database the file names (`db = "..."`), below `--db`.
    pub db: Option<PathBuf>,
    /// Every point of the grid, in order (the last key of `[grid]` varying fastest).
    pub points: Vec<Point>,
    /// The point the others are compared with (`baseline = {...}`; default: the first).
    pub baseline: usize,
}

/// One point of a sweep's grid: one named run.
#[derive(Debug, Clone)]
pub struct Point {
    /// Its place in the grid.
    pub index: usize,
    /// Its run's name.
    pub name: String,
    /// The settings it varies, as written in its name.
    pub varied: Vec<(String, String)>,
    /// Its settings (normalised; the neighbour table, if any, is set when it runs).
    pub config: RunConfig,
}

/// Settings a sweep's file may not set: the sweep names its runs and shards its points itself.
const SWEEP_OWNS: [&str; 2] = ["name", "shard"];

impl Sweep {
    /// Reads and checks a sweep file: every point's settings are checked before anything runs,
    /// errors naming the file and line.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| Error::bad_toml(path, &text, &e))?;
        let at = |key: &str, message: &str| {
            SettingsFile::of_values(path, &text, vec![]).error(key, message)
        };
        let mut name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sweep".into());
        let (mut db, mut base, mut grid, mut baseline) = (None, Vec::new(), Vec::new(), None);
        let mut listed: Option<Vec<Combination>> = None;
        let json = |key: &str, v: &toml::Value| {
            serde_json::to_value(v).map_err(|e| at(key, &format!("unreadable value: {e}")))
        };
        for (key, value) in &table {
            match (key.as_str(), value) {
                ("name", toml::Value::String(s)) => name = s.clone(),
                ("db", toml::Value::String(s)) => db = Some(PathBuf::from(s)),
                ("base", toml::Value::Table(t)) => {
                    for (k, v) in t {
                        base.push((k.clone(), json(k, v)?));
                    }
                }
                ("grid", toml::Value::Table(t)) => {
                    for (k, v) in t {
                        let toml::Value::Array(values) = v else {
                            return Err(at(k, &format!("`{k}` in [grid] takes a list of values")));
                        };
                        if values.is_empty() {
                            return Err(at(k, &format!("`{k}` in [grid] lists no value")));
                        }
                        let values: Vec<Value> =
                            values.iter().map(|v| json(k, v)).collect::<Result<_>>()?;
                        grid.push((k.clone(), values));
                    }
                }
                ("points", toml::Value::Array(items)) => {
                    let mut points = Vec::with_capacity(items.len());
                    for item in items {
                        let toml::Value::Table(t) = item else {
                            return Err(at(
                                key,
                                "`points` takes a list of tables of settings, e.g. [{ passes = 2 }]",
                            ));
                        };
                        let mut label = None;
                        let mut settings = Vec::new();
                        for (k, v) in t {
                            match (k.as_str(), v) {
                                ("name", toml::Value::String(s)) => label = Some(s.clone()),
                                ("name", _) => {
                                    return Err(at(
                                        key,
                                        "a point's `name` is a string: its run is NAME/name",
                                    ))
                                }
                                _ => settings.push((k.clone(), json(k, v)?)),
                            }
                        }
                        points.push(Combination { label, settings });
                    }
                    if points.is_empty() {
                        return Err(at(key, "`points` lists no point"));
                    }
                    listed = Some(points);
                }
                ("baseline", toml::Value::Table(t)) => {
                    let pairs = t
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), json(k, v)?)))
                        .collect::<Result<Vec<_>>>()?;
                    baseline = Some(pairs);
                }
                ("name" | "db" | "base" | "grid" | "baseline" | "points", _) => {
                    return Err(at(
                        key,
                        &format!(
                            "`{key}` is {}",
                            match key.as_str() {
                                "name" | "db" => "a string",
                                "baseline" => "a table of settings, e.g. { passes = 1 }",
                                "points" => "a list of tables of settings, e.g. [{ passes = 2 }]",
                                _ => "a table ([base] or [grid])",
                            }
                        ),
                    ))
                }
                _ => {
                    return Err(at(
                        key,
                        &format!(
                            "unknown key `{key}` (a sweep file has name, db, baseline, points, \
                             [base] and [grid])"
                        ),
                    ))
                }
            }
        }
        for key in base
            .iter()
            .map(|(k, _)| k)
            .chain(grid.iter().map(|(k, _)| k))
            .chain(
                listed
                    .iter()
                    .flatten()
                    .flat_map(|p| &p.settings)
                    .map(|(k, _)| k),
            )
        {
            if SWEEP_OWNS.contains(&key.as_str()) {
                return Err(at(
                    key,
                    &format!(
                        "`{key}`: the sweep names its runs and splits its points itself \
                         (tttnn sweep --shard I/N)"
                    ),
                ));
            }
        }
        // The grid's points: the last key varies fastest.
        let mut combos = vec![Combination::default()];
        for (key, values) in &grid {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut settings = c.settings.clone();
                        settings.push((key.clone(), v.clone()));
                        Combination {
                            label: None,
                            settings,
                        }
                    })
                })
                .collect();
        }
        // Listed points: each grid combination with each of them (its settings last).
        if let Some(listed) = &listed {
            combos = combos
                .iter()
                .flat_map(|c| {
                    listed.iter().map(move |p| {
                        let mut settings = c.settings.clone();
                        settings.retain(|(k, _)| !p.settings.iter().any(|(pk, _)| pk == k));
                        settings.extend(p.settings.iter().cloned());
                        Combination {
                            label: p.label.clone(),
                            settings,
                        }
                    })
                })
                .collect();
        }
        let mut points = Vec::with_capacity(combos.len());
        for (index, combo) in combos.into_iter().enumerate() {
            let Combination {
                label,
                settings: varied,
            } = combo;
            let shown: Vec<(String, String)> =
                varied.iter().map(|(k, v)| (k.clone(), plain(v))).collect();
            let point_name = if let Some(label) = &label {
                format!("{name}/{label}")
            } else if shown.is_empty() && listed.is_some() {
                // A listed point of no settings of its own: [base] alone.
                format!("{name}/base")
            } else if shown.is_empty() {
                name.clone()
            } else {
                let list: Vec<String> = shown.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{name}/{}", list.join(","))
            };
            let mut values = base.clone();
            values.retain(|(k, _)| !varied.iter().any(|(v, _)| v == k));
            values.extend(varied.iter().cloned());
            let file = SettingsFile::of_values(path, &text, values);
            let mut config = RunConfig::default().with_file(&file, |_| false)?;
            config.name = Some(point_name.clone());
            let config = config
                .normalized()
                .map_err(|e| Error::bad_file(path, format!("point {point_name}: {e}")))?;
            if points.iter().any(|p: &Point| p.name == point_name) {
                return Err(at("points", &format!("point {point_name} is listed twice")));
            }
            points.push(Point {
                index,
                name: point_name,
                varied: shown,
                config,
            });
        }
        let baseline = match baseline {
            None => 0,
            Some(pairs) => {
                let matching: Vec<usize> = points
                    .iter()
                    .filter(|p| {
                        pairs.iter().all(|(k, v)| {
                            (k == "name" && p.name == format!("{name}/{}", plain(v)))
                                || p.varied.iter().any(|(pk, pv)| pk == k && *pv == plain(v))
                        })
                    })
                    .map(|p| p.index)
                    .collect();
                match matching.as_slice() {
                    [one] => *one,
                    _ => {
                        return Err(at(
                            "baseline",
                            &format!(
                                "`baseline` matches {} points of the grid: name one point by \
                                 settings the grid varies",
                                matching.len()
                            ),
                        ))
                    }
                }
            }
        };
        Ok(Sweep {
            name,
            path: path.to_path_buf(),
            db,
            points,
            baseline,
        })
    }
}

/// The settings one point varies, from the grid or a `points` entry, and the name a `points`
/// entry gives it (its run is then `SWEEP/name`).
#[derive(Debug, Clone, Default)]
struct Combination {
    label: Option<String>,
    settings: Vec<(String, Value)>,
}

/// A setting's value as a point's name writes it: strings bare, the rest as JSON has them.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// How a sweep worker works (`tttnn sweep` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepOptions {
    /// The results database.
    pub db: PathBuf,
    /// Where the neighbour tables go (default: `DB.neighbors/` beside the database); workers with
    /// a database each give one directory they all see, to share the tables.
    pub tables: Option<PathBuf>,
    /// This worker's share of the points: I, I+N, ... of the grid.
    pub shard: Shard,
    /// Plan only: say what would run and what would be reused, write nothing.
    pub dry_run: bool,
    /// The comparison's resampling.
    pub resampling: Resampling,
    /// How long a worker waits for the other workers' shares of a neighbour table.
    pub wait: Duration,
}

/// Where a point stands in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "run_id")]
pub enum PointState {
    /// Not recorded.
    New,
    /// Recorded and finished: skipped.
    Finished(i64),
    /// Recorded, not finished (killed or failed): resumed.
    Unfinished(i64),
}

/// A neighbour table points share.
#[derive(Debug, Clone, Serialize)]
pub struct TableUse {
    /// Where it is (beside the database).
    pub path: PathBuf,
    /// Neighbours per document (the largest any of its points needs).
    pub k: usize,
    /// The points reading it, by name.
    pub points: Vec<String>,
    /// Its documents (all workers' shares).
    pub documents: usize,
    /// Documents this worker searched for it now (0: it was done already).
    pub searched: usize,
}

/// One point as a sweep worker saw it.
#[derive(Debug, Clone, Serialize)]
pub struct PointReport {
    pub index: usize,
    pub name: String,
    /// The settings it varies.
    pub varied: BTreeMap<String, String>,
    /// Whether this worker owns it (`--shard`).
    pub mine: bool,
    /// Its state when the sweep started.
    pub before: PointState,
    /// Its run after the sweep (None: not run here).
    pub run_id: Option<i64>,
    /// The neighbour table it reads, if any.
    pub table: Option<PathBuf>,
}

/// What a sweep did.
#[derive(Debug, Clone, Serialize)]
pub struct SweepSummary {
    pub sweep: String,
    /// The point compared against.
    pub baseline: String,
    pub points: Vec<PointReport>,
    pub tables: Vec<TableUse>,
    /// Neighbour queries put to the store by this worker (a document each, once per table).
    pub store_queries: u64,
    /// The points' comparison with the baseline (finished points only; None before any).
    #[serde(skip)]
    pub comparison: Option<Rows>,
}

/// What a sweep reports while it works.
#[derive(Debug)]
pub enum SweepEvent<'a> {
    /// A neighbour table is being computed (this worker's share of `documents`).
    Table { path: &'a Path, documents: usize },
    /// Waiting for other workers' shares of a table.
    Waiting { path: &'a Path, missing: usize },
    /// A point starts (`resume`: its unfinished run).
    Point {
        point: &'a Point,
        resume: Option<i64>,
        of: usize,
    },
    /// A point is skipped: finished already.
    Skipped { point: &'a Point, run_id: i64 },
    /// What a point's run reports.
    Run { point: &'a Point, event: Event<'a> },
}

/// Whether a point's neighbours come from a shared table: the methods that use neighbours, unless
/// the point names a table itself, pools SIFT's candidates by inner product (a table holds L2
/// neighbours), or chooses interpolate's α on held-out documents (outside the planned ones).
fn uses_table(cfg: &RunConfig) -> bool {
    cfg.method.uses_neighbors()
        && cfg.neighbors_from.is_none()
        && !(cfg.select.is_sift() && cfg.sift_pool == SiftPool::InnerProduct)
        && !(cfg.method == Method::Interpolate && cfg.alpha.is_none())
}

/// What makes two points' neighbours the same: the store, the documents, the search (k aside:
/// a table holds the largest k, and a run reads the first k of it).
fn retrieval_key(cfg: &RunConfig) -> Result<String> {
    let docs = TestDocs {
        shard: Shard::ALL,
        ..cfg.docs.clone()
    };
    let search = NeighborSearch {
        neighbors: 0,
        ..cfg.search.clone()
    };
    serde_json::to_string(&serde_json::json!({
        "store": cfg.store,
        "docs": docs,
        "search": search,
        "table": own_reference(cfg),
    }))
    .map_err(|e| Error::json("a sweep point's retrieval", e))
}

/// The directory of a sweep's neighbour tables: `tables`, else `DB.neighbors` beside `db`.
fn table_dir(db: &Path, tables: Option<&Path>) -> PathBuf {
    tables.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut dir = db.as_os_str().to_owned();
        dir.push(".neighbors");
        PathBuf::from(dir)
    })
}

/// The exact reference a point's retrieval computes itself: its `exact_reference`, when it
/// searches the whole store exactly. Such points read their neighbours from the reference, which
/// the sweep computes if it is missing, so the exact search is done once for both uses.
fn own_reference(cfg: &RunConfig) -> Option<&Path> {
    cfg.exact_reference
        .as_deref()
        .filter(|_| cfg.search.nprobes.is_none() && cfg.search.datastore().is_whole())
}

/// The neighbour tables of a sweep's points: one per distinct retrieval, in `dir` (or at the
/// exact reference its points name, holding the largest k any point measured against it takes).
fn table_groups(sweep: &Sweep, dir: &Path) -> Result<Vec<(TableUse, RunConfig)>> {
    let mut groups: BTreeMap<String, (TableUse, RunConfig)> = BTreeMap::new();
    for p in sweep.points.iter().filter(|p| uses_table(&p.config)) {
        let key = retrieval_key(&p.config)?;
        let hash = blake3::hash(key.as_bytes()).to_hex();
        let path = match own_reference(&p.config) {
            Some(reference) => reference.to_path_buf(),
            None => dir.join(format!("{}-{}", sanitize(&sweep.name), &hash[..12])),
        };
        let g = groups.entry(key).or_insert_with(|| {
            (
                TableUse {
                    path,
                    k: 0,
                    points: Vec::new(),
                    documents: 0,
                    searched: 0,
                },
                p.config.clone(),
            )
        });
        g.0.k = g.0.k.max(needed(&p.config));
        g.0.points.push(p.name.clone());
    }
    let mut groups: Vec<(TableUse, RunConfig)> = groups.into_values().collect();
    // A reference holds every k measured against it, whichever groups read it.
    for i in 0..groups.len() {
        let path = groups[i].0.path.clone();
        let k = sweep
            .points
            .iter()
            .filter(|p| p.config.exact_reference.as_deref() == Some(path.as_path()))
            .map(|p| p.config.search.neighbors)
            .chain(
                groups
                    .iter()
                    .filter(|(t, _)| t.path == path)
                    .map(|(t, _)| t.k),
            )
            .max()
            .unwrap_or(0);
        groups[i].0.k = k;
    }
    Ok(groups)
}

/// `name` as a file name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Each point's state in the database at `db` (all new when it does not exist).
fn point_states(sweep: &Sweep, db: &Path) -> Result<Vec<PointState>> {
    if !db.is_file() {
        return Ok(vec![PointState::New; sweep.points.len()]);
    }
    let db = Db::open_read_only(db)?;
    sweep
        .points
        .iter()
        .map(|p| {
            Ok(match db.runs_named(&p.name)?.first() {
                None => PointState::New,
                Some((id, row)) if row.status == RunStatus::Finished => PointState::Finished(*id),
                Some((id, _)) => PointState::Unfinished(*id),
            })
        })
        .collect()
}

/// The planned documents of a table's retrieval (every worker's).
fn table_documents(cfg: &RunConfig) -> Result<HashSet<String>> {
    let store = Store::open(cfg.store()?)?;
    let docs = TestDocs {
        shard: Shard::ALL,
        ..cfg.docs.clone()
    };
    Ok(plan::plan_store(&store, &plan::Selection::of(&docs)?)?
        .into_iter()
        .map(|d| d.doc_id)
        .collect())
}

/// Runs (or, with `dry_run`, plans) this worker's share of `sweep`.
pub fn run(
    sweep: &Sweep,
    opts: &SweepOptions,
    on_event: &mut dyn FnMut(SweepEvent),
) -> Result<SweepSummary> {
    let queries_before = store::queries_answered();
    let states = point_states(sweep, &opts.db)?;
    let mine = |p: &Point| opts.shard.owns(p.index);
    let sharded = opts.shard.count > 1;
    let mut tables = table_groups(sweep, &table_dir(&opts.db, opts.tables.as_deref()))?;
    let table_of = |name: &str, tables: &[(TableUse, RunConfig)]| {
        tables
            .iter()
            .find(|(t, _)| t.points.iter().any(|p| p == name))
            .map(|(t, _)| t.path.clone())
    };
    if !opts.dry_run {
        for (table, cfg) in tables.iter_mut() {
            // Alone, a worker computes a table only for points it still has to run; sharded, it
            // computes its share of every table, since the workers whose points read it cannot
            // see what the others have finished.
            let unfinished = sweep.points.iter().any(|p| {
                mine(p)
                    && table.points.contains(&p.name)
                    && !matches!(states[p.index], PointState::Finished(_))
            });
            if !(sharded || unfinished) {
                continue;
            }
            let documents = table_documents(cfg)?;
            table.documents = documents.len();
            let settings = NeighborsConfig {
                store: cfg.store()?.to_path_buf(),
                out: table.path.clone(),
                docs: TestDocs {
                    shard: opts.shard,
                    ..cfg.docs.clone()
                },
                search: NeighborSearch {
                    neighbors: table.k,
                    ..cfg.search.clone()
                },
                exact_search: ExactSearch::Matmul,
                slice: Slice::ALL,
                device: cfg.device,
                product: Product::F32,
                query_batch: None,
                block_rows: None,
                exact_reference: None,
            };
            if let Some(dir) = table.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            on_event(SweepEvent::Table {
                path: &table.path,
                documents: documents.len(),
            });
            table.searched = neighbors::compute(&settings, &mut |_| {})?.computed;
            if sharded && unfinished {
                wait_for_table(&table.path, &documents, opts.wait, on_event)?;
            }
        }
    }
    let mut reports = Vec::with_capacity(sweep.points.len());
    let owned = sweep.points.iter().filter(|p| mine(p)).count();
    for p in &sweep.points {
        let table = uses_table(&p.config)
            .then(|| table_of(&p.name, &tables))
            .flatten();
        let mut report = PointReport {
            index: p.index,
            name: p.name.clone(),
            varied: p.varied.iter().cloned().collect(),
            mine: mine(p),
            before: states[p.index],
            run_id: match states[p.index] {
                PointState::Finished(id) => Some(id),
                _ => None,
            },
            table: table.clone(),
        };
        if mine(p) && !opts.dry_run {
            let mut cfg = p.config.clone();
            cfg.neighbors_from = table;
            let resume = match states[p.index] {
                PointState::New => None,
                PointState::Finished(id) | PointState::Unfinished(id) => {
                    check_recorded(sweep, p, &cfg, &opts.db, id)?;
                    Some(id)
                }
            };
            match states[p.index] {
                PointState::Finished(id) => on_event(SweepEvent::Skipped {
                    point: p,
                    run_id: id,
                }),
                _ => {
                    on_event(SweepEvent::Point {
                        point: p,
                        resume,
                        of: owned,
                    });
                    let id = session::run(&cfg, &opts.db, resume, &mut |event| {
                        on_event(SweepEvent::Run { point: p, event })
                    })?;
                    report.run_id = Some(id);
                }
            }
        }
        reports.push(report);
    }
    let comparison = if opts.dry_run {
        None
    } else {
        compare(sweep, &opts.db, &opts.resampling)?
    };
    Ok(SweepSummary {
        sweep: sweep.name.clone(),
        baseline: sweep.points[sweep.baseline].name.clone(),
        points: reports,
        tables: tables.into_iter().map(|(t, _)| t).collect(),
        store_queries: store::queries_answered() - queries_before,
        comparison,
    })
}

/// A point's recorded run must have the settings the file gives it now (the neighbour table's
/// path aside: where a table lives is not what it holds, and reading it checks its settings).
fn check_recorded(sweep: &Sweep, p: &Point, cfg: &RunConfig, db: &Path, id: i64) -> Result<()> {
    let recorded = {
        let db = Db::open_read_only(db)?;
        db.run(id)?
            .ok_or_else(|| Error::internal(format!("run {id} vanished")))?
            .config
    };
    let mut recorded = RunConfig::from_recorded(&recorded)?;
    let mut now = cfg.clone().normalized()?;
    if uses_table(&p.config) {
        (recorded.neighbors_from, now.neighbors_from) = (None, None);
    }
    let recorded =
        serde_json::to_value(recorded).map_err(|e| Error::json("recorded run settings", e))?;
    let now = serde_json::to_value(now).map_err(|e| Error::json("a sweep point's settings", e))?;
    if recorded == now {
        return Ok(());
    }
    let differ: Vec<String> = match (&recorded, &now) {
        (Value::Object(a), Value::Object(b)) => b
            .iter()
            .filter(|(k, v)| a.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect(),
        _ => Vec::new(),
    };
    Err(Error::bad_file(
        &sweep.path,
        format!(
            "point {} is run {id} of {}, recorded with other settings ({}): the file changed \
             since; give another --db, or rename the sweep",
            p.name,
            db.display(),
            differ.join(", ")
        ),
    ))
}

/// Waits until the table at `path` holds every one of `documents` (the other workers' shares).
fn wait_for_table(
    path: &Path,
    documents: &HashSet<String>,
    wait: Duration,
    on_event: &mut dyn FnMut(SweepEvent),
) -> Result<()> {
    let start = Instant::now();
    let mut said = None::<Instant>;
    loop {
        let done = NeighborTable::open(path)?.done(0)?;
        let missing = documents.iter().filter(|d| !done.contains(*d)).count();
        if missing == 0 {
            return Ok(());
        }
        if start.elapsed() >= wait {
            return Err(Error::bad_file(
                path,
                format!(
                    "{missing} documents are still missing from this neighbour table after {} s: \
                     the other sweep workers (--shard) compute them; TTTNN_SWEEP_WAIT sets how \
                     long to wait",
                    wait.as_secs()
                ),
            ));
        }
        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            on_event(SweepEvent::Waiting { path, missing });
            said = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The finished points compared with the baseline (None: the baseline or every other point is
/// not finished in `db`).
fn compare(sweep: &Sweep, db: &Path, r: &Resampling) -> Result<Option<Rows>> {
    let states = point_states(sweep, db)?;
    let finished = |i: usize| match states[i] {
        PointState::Finished(id) => Some(id),
        _ => None,
    };
    let Some(base) = finished(sweep.baseline) else {
        return Ok(None);
    };
    let mut runs = vec![base];
    runs.extend(
        (0..sweep.points.len())
            .filter(|&i| i != sweep.baseline)
            .filter_map(finished),
    );
    if runs.len() < 2 {
        return Ok(None);
    }
    Db::open_read_only(db)?.compare(&runs, r).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(text: &str) -> Result<Sweep> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("order.toml");
        std::fs::write(&path, text).unwrap();
        Sweep::load(&path)
    }

    const BASE: &str = "[base]\nstore = \"s\"\nmodel = \"m\"\ntask = \"pile_all\"\n";

    #[test]
    fn a_grid_expands_to_named_points_the_last_key_fastest() {
        let s = sweep(&format!(
            "{BASE}[grid]\nneighbor_order = [\"nearest\", \"farthest\"]\npasses = [1, 2, 3]\n"
        ))
        .unwrap();
        let names: Vec<&str> = s.points.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "order/neighbor_order=nearest,passes=1",
                "order/neighbor_order=nearest,passes=2",
                "order/neighbor_order=nearest,passes=3",
                "order/neighbor_order=farthest,passes=1",
                "order/neighbor_order=farthest,passes=2",
                "order/neighbor_order=farthest,passes=3",
            ]
        );
        assert_eq!(s.points[4].config.schedule.passes, 2);
        assert_eq!(
            s.points[4].config.schedule.neighbor_order,
            super::super::settings::NeighborOrder::Farthest
        );
        assert_eq!(s.points[4].config.name.as_deref(), Some(names[4]));
        assert_eq!(s.baseline, 0);
        // A named baseline, and the base's settings in every point.
        let s = sweep(&format!(
            "name = \"x\"\nbaseline = {{ passes = 2 }}\n{BASE}lr = 0.5\n[grid]\npasses = [1, 2]\n"
        ))
        .unwrap();
        assert_eq!((s.baseline, s.points[1].name.as_str()), (1, "x/passes=2"));
        assert!(s.points.iter().all(|p| p.config.lr == 0.5));
        // No grid: one point, the sweep's name.
        let s = sweep(BASE).unwrap();
        assert_eq!(s.points.len(), 1);
        assert_eq!(s.points[0].name, "order");
    }

    #[test]
    fn bad_sweep_files_name_the_line() {
        let e = sweep(&format!("{BASE}[grid]\npases = [1, 2]\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("order.toml:6") && e.contains("`pases`"), "{e}");
        let e = sweep(&format!("{BASE}[grid]\npasses = 2\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":6") && e.contains("takes a list"), "{e}");
        let e = sweep(&format!("{BASE}shard = \"0/2\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(":5") && e.contains("tttnn sweep --shard"), "{e}");
        let e = sweep(&format!("runs = 3\n{BASE}")).unwrap_err().to_string();
        assert!(e.contains(":1") && e.contains("unknown key `runs`"), "{e}");
        let e = sweep(&format!(
            "baseline = {{ passes = 9 }}\n{BASE}[grid]\npasses = [1, 2]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("matches 0 points"), "{e}");
        // A point whose settings do not go together is refused before anything runs.
        let e = sweep(&format!(
            "{BASE}[grid]\nmethod = [\"ttt-nn\", \"in-context\"]\npasses = [2]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("point order/method=in-context,passes=2") && e.contains("`passes`"),
            "{e}"
        );
    }

    #[test]
    fn points_share_a_table_when_their_retrieval_agrees() {
        let s = sweep(&format!(
            "{BASE}[grid]\nneighbors = [3, 5]\nmethod = [\"ttt-nn\", \"in-context\", \"none\"]\n"
        ))
        .unwrap();
        let groups = table_groups(&s, &table_dir(Path::new("r.duckdb"), None)).unwrap();
        assert_eq!(groups.len(), 1, "one retrieval: one table");
        let (t, _) = &groups[0];
        assert_eq!(t.k, 5, "at the largest k");
        assert_eq!(t.points.len(), 4, "{:?}", t.points);
        assert!(t.path.starts_with("r.duckdb.neighbors"));
        // Another distance threshold is another retrieval.
        let s = sweep(&format!("{BASE}[grid]\ndistance_threshold = [4.0, 2.5]\n")).unwrap();
        assert_eq!(table_groups(&s, Path::new("t")).unwrap().len(), 2);
    }

    #[test]
    fn listed_points_and_an_exact_reference_read_by_the_exact_ones() {
        let s = sweep(&format!(
            "points = [{{}}, {{ passes = 2 }}, {{ neighbors_per_step = 2, passes = 2 }}, \
             {{ datastore_fraction = 0.5 }}, {{ name = \"k7\", neighbors = 7 }}]\n\
             baseline = {{ name = \"k7\" }}\n\
             {BASE}exact_reference = \"ref\"\nneighbors = 3\n"
        ))
        .unwrap();
        let names: Vec<&str> = s.points.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "order/base",
                "order/passes=2",
                "order/neighbors_per_step=2,passes=2",
                "order/datastore_fraction=0.5",
                "order/k7"
            ]
        );
        assert_eq!(s.baseline, 4, "named by its name");
        assert_eq!(s.points[4].config.search.neighbors, 7);
        let groups = table_groups(&s, Path::new("t")).unwrap();
        assert_eq!(groups.len(), 2, "exact, and half the store");
        let exact = groups
            .iter()
            .find(|(t, _)| t.path == Path::new("ref"))
            .unwrap();
        assert_eq!((exact.0.k, exact.0.points.len()), (7, 4));
        let half = groups
            .iter()
            .find(|(t, _)| t.path != Path::new("ref"))
            .unwrap();
        assert_eq!(half.0.points, ["order/datastore_fraction=0.5"]);
        let e = sweep(&format!(
            "points = [{{ passes = 2 }}, {{ passes = 2 }}]\n{BASE}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("order/passes=2 is listed twice"), "{e}");
    }
}
