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
pub mod stats;
pub mod store;
pub mod task;
pub mod ttt;

pub use device::Device;
pub use error::{Error, Result};

/// Sets the environment tttnn's libraries read once per process, where the user has not set it:
/// MKL's reproducible GEMMs for libtorch on the CPU (`MKL_DYNAMIC=FALSE`: by default MKL may run a
/// GEMM on fewer threads than asked when it judges the machine busy, and so sum in another order;
/// `MKL_CBWR=AUTO`: MKL picks kernels by the buffers' alignment, which differs between processes,
/// unless its conditional numerical reproducibility mode is on), and Lance's exact row-to-partition
/// assignment in IVF builds ([`store::ASSIGNMENT_ENV`]). Call it first in `main`, before any
/// thread starts (the environment is not thread-safe).
pub fn set_library_env() {
    for (var, value) in [
        ("MKL_DYNAMIC", "FALSE"),
        ("MKL_CBWR", "AUTO"),
        (store::ASSIGNMENT_ENV, "disabled"),
    ] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, value);
        }
    }
}

/// tttnn's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit tttnn was built from (empty outside a git checkout).
pub const GIT_COMMIT: &str = env!("TTTNN_GIT_COMMIT");
