//! The documents a run evaluates, in order (docs/spec.md §3.1): per task (sorted by name), the
//! task's test documents in file order shuffled by CPython's `random.Random(seed)`, the first
//! `int(val_portion·n)` kept, cut to `limit_docs`, then this shard's share.
use super::settings::TestDocs;
use crate::error::{Error, Result};
use crate::store::DocRef;
use crate::task::{self, Shard, Task};

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

impl PlannedDoc {
    /// The seed of this document's dropout masks: it depends only on the document, not on what
    /// ran before in this process, so a resumed or sharded run draws the same ones.
    pub fn seed(&self, run_seed: u64) -> i64 {
        (run_seed as i64).wrapping_mul(1_000_003)
            + (self.task_index as i64) * 1_000_000_007
            + self.position as i64
    }
}

/// Which test documents to take from each task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selection<'a> {
    /// One set or all.
    pub task: &'a Task,
    /// The split the test documents are stored under (for the error message).
    pub split: &'a str,
    /// Fraction of each task's shuffled documents kept.
    pub val_portion: f64,
    /// The shuffle's seed.
    pub seed: u64,
    /// At most this many documents per task.
    pub limit_docs: Option<usize>,
    /// This worker's share.
    pub shard: Shard,
}

impl<'a> Selection<'a> {
    /// The selection `docs` describes (its task is required).
    pub fn of(docs: &'a TestDocs) -> Result<Self> {
        Ok(Selection {
            task: docs.task()?,
            split: &docs.split,
            val_portion: docs.val_portion,
            seed: docs.seed,
            limit_docs: docs.limit_docs,
            shard: docs.shard,
        })
    }
}

/// The plan of the test documents `s` selects from `store`'s documents of `s.split`.
pub fn plan_store(store: &crate::store::Store, s: &Selection) -> Result<Vec<PlannedDoc>> {
    plan(&store.documents_of(s.split, None)?, s)
}

/// The plan over `docs`, a split's documents in file order (as [`crate::store::Store::documents_of`]
/// returns them).
pub fn plan(docs: &[DocRef], s: &Selection) -> Result<Vec<PlannedDoc>> {
    let mut sets: Vec<&str> = docs.iter().map(|d| d.set_name.as_str()).collect();
    sets.sort_unstable();
    sets.dedup();
    let chosen: Vec<&str> = match s.task {
        Task::All => sets.clone(),
        Task::Set(set) => {
            if !sets.contains(&set.as_str()) {
                return Err(Error::setting(
                    "task",
                    format!(
                        "the store has no `{}` documents of set `{set}`; sets there: {}",
                        s.split,
                        if sets.is_empty() {
                            "none (ingest test files with --split test)".into()
                        } else {
                            sets.join(", ")
                        }
                    ),
                ));
            }
            vec![set.as_str()]
        }
    };
    let mut tasks: Vec<(String, &str)> = chosen
        .into_iter()
        .map(|set| (Task::name_of_set(set), set))
        .collect();
    tasks.sort();
    let mut out = Vec::new();
    for (task_index, (task, set)) in tasks.iter().enumerate() {
        let in_set: Vec<&DocRef> = docs.iter().filter(|d| d.set_name == *set).collect();
        let mut subset = task::test_subset(in_set.len(), s.val_portion, s.seed);
        if let Some(limit) = s.limit_docs {
            subset.truncate(limit);
        }
        for (position, &i) in subset.iter().enumerate() {
            if s.shard.owns(position) {
                out.push(PlannedDoc {
                    seq: out.len(),
                    task_index,
                    task: task.clone(),
                    set_name: set.to_string(),
                    position,
                    doc_id: in_set[i].id.clone(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(sets: &[(&str, usize)]) -> Vec<DocRef> {
        sets.iter()
            .flat_map(|&(set, n)| {
                (1..=n).map(move |line| DocRef {
                    id: format!("{set}:{line}"),
                    set_name: set.into(),
                    source: format!("{set}.jsonl"),
                    line: line as u64,
                })
            })
            .collect()
    }

    fn selection(task: &Task) -> Selection<'_> {
        Selection {
            task,
            split: "test",
            val_portion: 1.0,
            seed: task::SEED,
            limit_docs: None,
            shard: Shard::ALL,
        }
    }

    #[test]
    fn tasks_are_sorted_by_name_and_each_shuffled_as_cpython() {
        let d = docs(&[("Github", 5), ("ArXiv", 3)]);
        let p = plan(&d, &selection(&Task::All)).unwrap();
        let tasks: Vec<&str> = p.iter().map(|d| d.task.as_str()).collect();
        assert_eq!(
            tasks,
            ["pile_arxiv"; 3]
                .iter()
                .chain(&["pile_github"; 5])
                .copied()
                .collect::<Vec<_>>()
        );
        // The order within a task is the CPython shuffle task.rs reproduces (tested there).
        let order: Vec<usize> = task::test_subset(5, 1.0, task::SEED);
        let github: Vec<String> = p[3..].iter().map(|d| d.doc_id.clone()).collect();
        let want: Vec<String> = order.iter().map(|i| format!("Github:{}", i + 1)).collect();
        assert_eq!(github, want);
        assert_eq!(
            p.iter().map(|d| d.seq).collect::<Vec<_>>(),
            (0..8).collect::<Vec<_>>()
        );
        assert_eq!((p[3].task_index, p[3].position), (1, 0));
    }

    #[test]
    fn portion_limit_and_shard_cut_in_that_order() {
        let d = docs(&[("Github", 20)]);
        let all = Task::All;
        let full = plan(&d, &selection(&all)).unwrap();
        let s = Selection {
            val_portion: 0.5,
            limit_docs: Some(6),
            shard: Shard { index: 1, count: 2 },
            ..selection(&all)
        };
        let p = plan(&d, &s).unwrap();
        let subset = task::test_subset(20, 0.5, task::SEED);
        assert_eq!(subset.len(), 10);
        let want: Vec<String> = [1, 3, 5]
            .iter()
            .map(|&pos| format!("Github:{}", subset[pos] + 1))
            .collect();
        assert_eq!(p.iter().map(|d| d.doc_id.clone()).collect::<Vec<_>>(), want);
        assert_eq!(p.iter().map(|d| d.position).collect::<Vec<_>>(), [1, 3, 5]);
        assert_eq!(p.iter().map(|d| d.seq).collect::<Vec<_>>(), [0, 1, 2]);
        // The full subset's first element is the 0.5 subset's first: same shuffle, cut later.
        assert_eq!(full[0].doc_id, format!("Github:{}", subset[0] + 1));
    }

    #[test]
    fn an_absent_set_names_the_sets_there() {
        let d = docs(&[("Github", 2)]);
        let task = Task::Set("FreeLaw".into());
        let e = plan(&d, &selection(&task)).unwrap_err().to_string();
        assert!(
            e.contains("set `FreeLaw`") && e.contains("sets there: Github"),
            "{e}"
        );
        let e = plan(&[], &selection(&task)).unwrap_err().to_string();
        assert!(e.contains("none (ingest"), "{e}");
    }

    #[test]
    fn dropout_seed_depends_on_the_document_only() {
        let d = docs(&[("Github", 4)]);
        let p = plan(&d, &selection(&Task::All)).unwrap();
        let seeds: Vec<i64> = p.iter().map(|d| d.seed(1216)).collect();
        let mut unique = seeds.clone();
        unique.dedup();
        assert_eq!(unique.len(), 4);
        let shard = Selection {
            shard: Shard { index: 1, count: 2 },
            ..selection(&Task::All)
        };
        let q = plan(&d, &shard).unwrap();
        assert_eq!(q[0].seed(1216), p[1].seed(1216));
    }
}
