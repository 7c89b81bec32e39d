//! tttnn: test-time training on nearest neighbours (Hardt & Sun 2023), as a workbench.
//!
//! The modules follow the data path: [`corpus`] → [`embed`] → [`store`] (index/retrieve) → [`lm`]
//! → [`ttt`] → [`eval`] → [`records`]; [`task`] picks the test documents, [`select`] chooses
//! neighbours (nearest or SIFT), [`runner`] drives one
//! run through the stages, and a thin [`cli`] sits on top.
pub mod cli;
pub mod config;
pub mod corpus;
pub mod embed;
pub mod error;
pub mod eval;
pub mod lm;
pub mod records;
pub mod runner;
pub mod select;
pub mod store;
pub mod task;
pub mod ttt;

pub use error::{Error, Result};

/// tttnn's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit tttnn was built from (empty outside a git checkout).
pub const GIT_COMMIT: &str = env!("TTTNN_GIT_COMMIT");
