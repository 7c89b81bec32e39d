//! tttnn: test-time training on nearest neighbours (Hardt & Sun 2023), as a workbench.
//!
//! The modules follow the data path: [`corpus`] → [`embed`] → [`store`] (index/retrieve) → [`lm`]
//! → [`ttt`] → [`eval`] → [`records`], with a thin [`cli`] on top.
pub mod cli;
pub mod config;
pub mod corpus;
pub mod embed;
pub mod error;
pub mod eval;
pub mod lm;
pub mod records;
pub mod store;
pub mod ttt;

pub use error::{Error, Result};

/// tttnn's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
