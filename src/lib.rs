//! tttnn: test-time training on nearest neighbours (Hardt & Sun 2023), as a workbench.
//!
//! The modules follow the data path: [`corpus`] → [`ingest`] ([`embed`] into the [`store`]) →
//! retrieval from the [`store`] → [`lm`] → [`ttt`] → [`eval`] → [`records`]; [`task`] picks the
//! test documents, [`select`] chooses neighbours (nearest or SIFT), and [`runner`] drives one run
//! through the stages. The `tttnn` binary (`src/main.rs`, `src/cli/`) parses flags, calls one of
//! these entry points and prints.
pub mod corpus;
pub mod device;
pub mod embed;
pub mod error;
pub mod eval;
pub mod ingest;
pub mod lm;
pub mod records;
pub mod runner;
pub mod select;
mod settings;
pub mod store;
pub mod task;
pub mod ttt;

pub use device::Device;
pub use error::{Error, Result};

/// tttnn's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit tttnn was built from (empty outside a git checkout).
pub const GIT_COMMIT: &str = env!("TTTNN_GIT_COMMIT");
