//! The library's error type: every variant carries the context (file, line, field, id) a user needs,
//! and its class decides the exit code: bad input 1 (the user can fix it: a file, a setting, a
//! damaged store), the machine refused 2 (disk full, permissions), internal 2.
mod upstream;

use std::path::PathBuf;

pub use upstream::chain_text;

/// Errors raised by tttnn's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user gave us something we cannot use: a file, a line (or a Parquet row) in it.
    #[error("{path}{}: {message}", place(*line, *row))]
    BadInput {
        path: PathBuf,
        /// The 1-based line, or row where `row` is set.
        line: Option<u64>,
        /// `line` counts a Parquet file's rows.
        row: bool,
        message: String,
    },

    /// A setting has a value we cannot accept.
    #[error("invalid setting `{field}`: {message}")]
    BadSetting { field: String, message: String },

    /// A native library (libtorch, ONNX Runtime, libduckdb) is missing or of the wrong version.
    #[error("{library}: {message}")]
    Library {
        library: &'static str,
        message: String,
    },

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The machine refused: the disk is full, a permission or a limit is missing. What was
    /// committed is kept.
    #[error("{what}: {problem}; {}", upstream::KEPT)]
    Environment {
        /// The file, store or database it happened to.
        what: String,
        /// What the machine refused and what to do.
        problem: String,
    },

    /// The LanceDB store failed (the message without upstream source locations).
    #[error("store {}: {message}", path.display())]
    Store { path: PathBuf, message: String },

    /// The DuckDB results database failed.
    #[error("results database {}: {message}", path.display())]
    Records { path: PathBuf, message: String },

    /// libtorch failed.
    #[error("libtorch ({context}): {message}")]
    Torch { context: String, message: String },

    /// ONNX Runtime failed.
    #[error("ONNX Runtime ({context}): {source}")]
    Onnx {
        context: String,
        #[source]
        source: ort::Error,
    },

    /// A tokenizer failed to load or encode.
    #[error("tokenizer {}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },

    /// Arrow refused a batch we built.
    #[error("Arrow ({context}): {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow_schema::ArrowError,
    },

    /// JSON we wrote or read back (a run's config, a report) failed.
    #[error("JSON ({context}): {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },

    /// The async runtime LanceDB needs could not start.
    #[error("tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),

    /// A plot could not be drawn or written.
    #[error("plot {}: {message}", path.display())]
    Plot { path: PathBuf, message: String },

    /// Something that should not happen did; a bug or an unexpected upstream state.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where in a file a bad input is: `:LINE`, `, row ROW`, or nothing.
fn place(line: Option<u64>, row: bool) -> String {
    match (line, row) {
        (Some(l), false) => format!(":{l}"),
        (Some(r), true) => format!(", row {r}"),
        (None, _) => String::new(),
    }
}

/// Result with tttnn's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code for this error: 1 for bad input, 2 for the machine's refusals
    /// (`Environment`) and internal errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadInput { .. } | Error::BadSetting { .. } | Error::Tokenizer { .. } => 1,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 1,
            _ => 2,
        }
    }

    /// A bad-input error about a whole file.
    pub fn bad_file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadInput {
            path: path.into(),
            line: None,
            row: false,
            message: message.into(),
        }
    }

    /// A bad-input error about one line of a file.
    pub fn bad_line(path: impl Into<PathBuf>, line: u64, message: impl Into<String>) -> Self {
        Self::bad_file(path, message).at_line(Some(line))
    }

    /// A bad-input error about one row of a Parquet file.
    pub fn bad_row(path: impl Into<PathBuf>, row: u64, message: impl Into<String>) -> Self {
        Error::BadInput {
            path: path.into(),
            line: Some(row),
            row: true,
            message: message.into(),
        }
    }

    /// A TOML file at `path` (its `text`) that does not parse: bad input at the error's line.
    pub fn bad_toml(path: impl Into<PathBuf>, text: &str, e: &toml::de::Error) -> Self {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() as u64 + 1);
        Self::bad_file(path, e.message()).at_line(line)
    }

    /// This bad-input error placed at `line` of its file; other errors unchanged.
    pub fn at_line(self, at: Option<u64>) -> Self {
        match self {
            Error::BadInput {
                path, message, row, ..
            } => Error::BadInput {
                path,
                line: at,
                row,
                message,
            },
            other => other,
        }
    }

    /// An I/O error on a path (a refusal of the machine says so).
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        Self::refused(|| path.display().to_string(), &source).unwrap_or(Error::Io { path, source })
    }

    /// The `Environment` error `source` is, if it reports a refusal of the machine (disk full,
    /// permissions, limits) about `what`.
    fn refused(
        what: impl FnOnce() -> String,
        source: &(dyn std::error::Error + 'static),
    ) -> Option<Self> {
        upstream::refusal(source).map(|problem| Error::Environment {
            what: what(),
            problem: problem.to_string(),
        })
    }

    /// A libtorch error with what we were doing (without libtorch's C++ source locations).
    pub fn torch(context: impl Into<String>, source: tch::TchError) -> Self {
        Error::Torch {
            context: context.into(),
            message: upstream::clean(&source.to_string()),
        }
    }

    /// A setting (flag, env var or TOML key `field`) with a value we cannot accept.
    pub fn setting(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::BadSetting {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A native library that is missing or of the wrong version.
    pub fn library(library: &'static str, message: impl Into<String>) -> Self {
        Error::Library {
            library,
            message: message.into(),
        }
    }

    /// A LanceDB error on the store at `path`: a refusal of the machine, a damaged store (bad
    /// input), or a store error, each said without upstream source locations.
    pub fn store(path: impl Into<PathBuf>, source: lancedb::Error) -> Self {
        let path = path.into();
        let text = upstream::chain_text(&source);
        tracing::debug!("store {}: {text}", path.display());
        if let Some(e) = Self::refused(|| format!("store {}", path.display()), &source) {
            return e;
        }
        if let Some(damage) = upstream::store_damage(&text) {
            return Error::bad_file(path, damage);
        }
        Error::Store {
            path,
            message: upstream::clean(&text),
        }
    }

    /// A DuckDB error on the results database at `path`: a refusal of the machine, a file that is
    /// not a database (bad input), or a database error.
    pub fn records(path: impl Into<PathBuf>, source: duckdb::Error) -> Self {
        let path = path.into();
        let text = upstream::chain_text(&source);
        if let Some(e) = Self::refused(|| format!("results database {}", path.display()), &source) {
            return e;
        }
        if text.contains("not a valid DuckDB database file") {
            return Error::not_a_database(path);
        }
        Error::Records {
            path,
            message: upstream::clean(&text),
        }
    }

    /// `path` is not a DuckDB results database.
    pub fn not_a_database(path: impl Into<PathBuf>) -> Self {
        Error::bad_file(
            path,
            "not a DuckDB results database: give --db a database tttnn wrote, or a new path to create one",
        )
    }

    /// A tokenizer at `path` that failed to load or encode.
    pub fn tokenizer(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::Tokenizer {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// An Arrow error with what we were building.
    pub fn arrow(context: impl Into<String>, source: arrow_schema::ArrowError) -> Self {
        Error::Arrow {
            context: context.into(),
            source,
        }
    }

    /// A JSON error with what we were reading or writing.
    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }

    /// The tokio runtime failed to start.
    pub fn runtime(source: std::io::Error) -> Self {
        Error::Runtime(source)
    }

    /// A plot at `path` that could not be drawn or written.
    pub fn plot(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::Plot {
            path: path.into(),
            message: message.to_string(),
        }
    }

    /// A bug or an upstream state that should not happen.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// An ONNX Runtime error with what we were doing.
    pub fn onnx(context: impl Into<String>, source: ort::Error) -> Self {
        Error::Onnx {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_line_names_file_and_line() {
        let e = Error::bad_line("data/x.jsonl", 7, "missing field `text`");
        assert_eq!(e.to_string(), "data/x.jsonl:7: missing field `text`");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(Error::internal("x").exit_code(), 2);
        assert_eq!(
            Error::setting("lr", "-1 is not a learning rate").exit_code(),
            1
        );
        assert_eq!(
            Error::setting("lr", "bad").to_string(),
            "invalid setting `lr`: bad"
        );
    }
}
