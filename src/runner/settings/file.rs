//! Settings from elsewhere than the command line: a `--config` TOML file (below flags and env
//! vars, above defaults) and the config JSON recorded with a run (read back by `--resume` and
//! `merge`, including those recorded by older tttnn versions).
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::RunConfig;
use crate::error::{Error, Result};

/// A `--config` TOML file: run settings (any [`RunConfig`] key) plus `db`, the results database.
#[derive(Debug, Clone, Default)]
pub struct SettingsFile {
    /// The results database, if the file names one.
    pub db: Option<PathBuf>,
    path: PathBuf,
    text: String,
    values: Vec<(String, Value)>,
}

impl SettingsFile {
    /// Reads a settings file; syntax errors name the file and line.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| Error::bad_toml(path, &text, &e))?;
        // The text goes in first: `error` finds a key's line in it.
        let mut file = Self {
            path: path.to_path_buf(),
            text,
            ..Default::default()
        };
        for (key, value) in table {
            let value = serde_json::to_value(&value)
                .map_err(|e| file.error(&key, &format!("unreadable value: {e}")))?;
            if key == "db" {
                file.db = Some(PathBuf::from(value.as_str().ok_or_else(|| {
                    file.error("db", "`db` is the results database path, a string")
                })?));
            } else {
                file.values.push((key, value));
            }
        }
        Ok(file)
    }

    /// The settings `values` read from the file at `path` (its `text`, for the lines errors
    /// name): a part of a larger file, such as a sweep's `[base]`.
    pub fn of_values(path: &Path, text: &str, values: Vec<(String, Value)>) -> Self {
        Self {
            db: None,
            path: path.to_path_buf(),
            text: text.to_string(),
            values,
        }
    }

    /// An error about `key`, naming the file and the key's line.
    pub fn error(&self, key: &str, message: &str) -> Error {
        let line = self.text.lines().position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        Error::bad_file(&self.path, message).at_line(line.map(|l| l as u64 + 1))
    }
}

impl RunConfig {
    /// Takes the file's value for every setting that `explicit` says was not given as a flag or
    /// env var: flag > env > file > default. Unknown keys and bad values name the file and line.
    pub fn with_file(self, file: &SettingsFile, explicit: impl Fn(&str) -> bool) -> Result<Self> {
        let mut map = to_map(&self)?;
        for (key, value) in &file.values {
            if !map.contains_key(key) {
                return Err(file.error(key, &format!("unknown setting `{key}`")));
            }
            if explicit(key) {
                continue;
            }
            map.insert(key.clone(), value.clone());
            // Checked one key at a time so a bad value is reported at its own line.
            if let Err(e) = serde_json::from_value::<RunConfig>(Value::Object(map.clone())) {
                return Err(file.error(key, &format!("`{key}`: {e}")));
            }
        }
        serde_json::from_value(Value::Object(map)).map_err(|e| Error::json("run settings", e))
    }

    /// Reads a recorded config JSON: missing settings (a run recorded by an older tttnn) take
    /// today's defaults, and settings recorded under older names are renamed.
    pub fn from_recorded(json: &str) -> Result<Self> {
        let context = "recorded run config";
        let recorded: Value = serde_json::from_str(json).map_err(|e| Error::json(context, e))?;
        let Value::Object(recorded) = recorded else {
            return Err(Error::internal(format!("{context} is not a JSON object")));
        };
        let mut map = to_map(&RunConfig::default())?;
        // A run recorded before `short_chunks` existed skipped one-token chunks: resume it so.
        if !recorded.contains_key("short_chunks") {
            map.insert("short_chunks".into(), Value::from("skip"));
        }
        for (key, value) in recorded {
            match (key.as_str(), value) {
                // Before the settings were one struct: `sift: {lambda, adaptive}`, `shard` as an
                // object and `refine_factor: null` for no re-ranking.
                ("sift", Value::Object(sift)) => {
                    for (k, v) in sift {
                        map.insert(format!("sift_{k}"), v);
                    }
                }
                ("shard", Value::Object(s)) => {
                    let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
                    map.insert(key, Value::String(format!("{}/{}", n("index"), n("count"))));
                }
                ("refine_factor", Value::Null) => {
                    map.insert(key, Value::from(0));
                }
                (_, value) => {
                    map.insert(key, value);
                }
            }
        }
        serde_json::from_value(Value::Object(map)).map_err(|e| Error::json(context, e))
    }
}

impl RunConfig {
    /// A recorded config JSON as every shard of its run has it: read as [`RunConfig::from_recorded`]
    /// reads it, the shard left out (what `merge` compares shards by).
    pub fn recorded_without_shard(json: &str) -> Result<String> {
        Self::from_recorded(json)?.without_shard().to_json()
    }
}

fn to_map(cfg: &RunConfig) -> Result<Map<String, Value>> {
    match serde_json::to_value(cfg).map_err(|e| Error::json("run settings", e))? {
        Value::Object(m) => Ok(m),
        _ => Err(Error::internal("run settings are not a JSON object")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::ContextOrder;
    use super::*;
    use crate::runner::settings::NeighborSearch;
    use crate::store::SearchMode;
    use crate::task::Shard;

    fn file(text: &str) -> (tempfile::TempDir, SettingsFile) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        let f = SettingsFile::load(&p).unwrap();
        (dir, f)
    }

    #[test]
    fn flag_or_env_beats_file_beats_default() {
        let (_d, f) = file("neighbors = 7\nlr = 0.5\ndb = \"x.duckdb\"\nshard = \"1/2\"\n");
        let given = RunConfig {
            search: NeighborSearch {
                neighbors: 3,
                ..RunConfig::default().search
            },
            ..RunConfig::default()
        };
        let c = given.with_file(&f, |k| k == "neighbors").unwrap();
        assert_eq!((c.search.neighbors, c.lr), (3, 0.5));
        assert_eq!(c.docs.shard, Shard { index: 1, count: 2 });
        assert_eq!(f.db.as_deref(), Some(Path::new("x.duckdb")));
        let c = RunConfig::default().with_file(&f, |_| false).unwrap();
        assert_eq!(c.search.neighbors, 7);
    }

    #[test]
    fn file_errors_name_the_line() {
        let (_d, f) = file("lr = 0.1\n\nneighbours = 7\n");
        let e = RunConfig::default().with_file(&f, |_| false).unwrap_err();
        assert!(
            e.to_string()
                .contains("c.toml:3: unknown setting `neighbours`"),
            "{e}"
        );
        let (_d, f) = file("neighbors = \"many\"\n");
        let e = RunConfig::default().with_file(&f, |_| false).unwrap_err();
        assert!(e.to_string().contains("c.toml:1: `neighbors`"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.toml");
        std::fs::write(&p, "\nneighbors = = 2\n").unwrap();
        let e = SettingsFile::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.toml:2:"), "{e}");
        std::fs::write(&p, "lr = 0.1\ndb = 3\n").unwrap();
        let e = SettingsFile::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("bad.toml:2: `db` is the results database path"),
            "{e}"
        );
    }

    #[test]
    fn recorded_configs_round_trip_and_old_ones_upgrade() {
        let c = RunConfig {
            store: Some("s".into()),
            eval_at: "1,5".parse().unwrap(),
            in_context_order: ContextOrder::Original,
            ..RunConfig::default()
        };
        let json = c.to_json().unwrap();
        assert!(json.contains(r#""in_context_order":"original""#), "{json}");
        assert_eq!(RunConfig::from_recorded(&json).unwrap(), c);
        let old = r#"{"store":"s","sift":{"lambda":0.5,"adaptive":null},
            "shard":{"index":1,"count":3},"refine_factor":null,"nprobes":null}"#;
        let c = RunConfig::from_recorded(old).unwrap();
        assert_eq!((c.sift_lambda, c.search.refine_factor), (0.5, 0));
        assert_eq!(c.docs.shard, Shard { index: 1, count: 3 });
        assert_eq!(c.search_mode(), SearchMode::Exact);
        // A run recorded before `short_chunks` skipped one-token chunks, and resumes so.
        assert_eq!(c.short_chunks, crate::ttt::ShortChunks::Skip);
        assert_eq!(
            RunConfig::default().short_chunks,
            crate::ttt::ShortChunks::Step
        );
    }
}
