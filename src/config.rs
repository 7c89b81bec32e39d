//! Settings from a TOML file. Precedence is CLI flag > `TTTNN_*` env var > TOML file > default:
//! clap resolves the first two into `Option`s, [`pick`] falls back to the file, then the default.
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Reads a TOML settings file; unknown keys are errors that name the file and line.
pub fn load_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start].matches('\n').count() as u64 + 1);
        Error::BadInput {
            path: path.to_path_buf(),
            line,
            message: e.message().to_string(),
        }
    })
}

/// The first value present: CLI or env (already merged by clap), then the file, then the default.
pub fn pick<T>(cli_or_env: Option<T>, file: Option<T>, default: T) -> T {
    cli_or_env.or(file).unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Default, Debug)]
    #[serde(deny_unknown_fields)]
    struct S {
        neighbors: Option<usize>,
    }

    #[test]
    fn precedence_and_errors_with_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "neighbors = 7\n").unwrap();
        let s: S = load_toml(Some(&p)).unwrap();
        assert_eq!(pick(None, s.neighbors, 50), 7);
        assert_eq!(pick(Some(3), s.neighbors, 50), 3);
        assert_eq!(pick(None, None, 50), 50);
        std::fs::write(&p, "\nneighbours = 7\n").unwrap();
        let e = load_toml::<S>(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("c.toml:2:"), "{e}");
    }
}
