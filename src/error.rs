//! The library's error type: every variant carries the context (file, line, field, id) a user needs.
use std::path::PathBuf;

/// Errors raised by tttnn's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user gave us something we cannot use: a file, a line in it, a setting.
    #[error("{path}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    BadInput {
        path: PathBuf,
        line: Option<u64>,
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

    /// The LanceDB store failed.
    #[error("store {}: {source}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: lancedb::Error,
    },

    /// The DuckDB results database failed.
    #[error("results database {}: {source}", path.display())]
    Records {
        path: PathBuf,
        #[source]
        source: duckdb::Error,
    },

    /// libtorch failed.
    #[error("libtorch ({context}): {source}")]
    Torch {
        context: String,
        #[source]
        source: tch::TchError,
    },

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

/// Result with tttnn's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The process exit code for this error: 1 for bad input, 2 for internal errors.
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
            message: message.into(),
        }
    }

    /// A bad-input error about one line of a file.
    pub fn bad_line(path: impl Into<PathBuf>, line: u64, message: impl Into<String>) -> Self {
        Error::BadInput {
            path: path.into(),
            line: Some(line),
            message: message.into(),
        }
    }

    /// An I/O error on a path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A libtorch error with what we were doing.
    pub fn torch(context: impl Into<String>, source: tch::TchError) -> Self {
        Error::Torch {
            context: context.into(),
            source,
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

    /// A LanceDB error on the store at `path`.
    pub fn store(path: impl Into<PathBuf>, source: lancedb::Error) -> Self {
        Error::Store {
            path: path.into(),
            source,
        }
    }

    /// A DuckDB error on the results database at `path`.
    pub fn records(path: impl Into<PathBuf>, source: duckdb::Error) -> Self {
        Error::Records {
            path: path.into(),
            source,
        }
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
