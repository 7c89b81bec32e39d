//! tttnn: test-time training on nearest neighbours (Hardt & Sun 2023), as a workbench.
//!
//! The modules follow the data path: [`corpus`] → [`embed`] → [`store`] → [`lm`] → [`ttt`] →
//! [`eval`] → [`records`] (with [`stats`] for comparing runs); [`task`] picks the test documents and
//! [`select`] chooses neighbours (nearest or SIFT). Two drivers run the stages: [`ingest`] (corpus →
//! embed → store) and [`runner`] (one run, or a sweep of them). The `tttnn` binary (`src/main.rs`, `src/cli/`) parses flags, calls one of
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
    for (var, value) in LIBRARY_ENV {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, value);
        }
    }
}

/// What [`set_library_env`] sets; `.cargo/config.toml` gives the same to the processes cargo runs.
const LIBRARY_ENV: [(&str, &str); 3] = [
    ("MKL_DYNAMIC", "FALSE"),
    ("MKL_CBWR", "AUTO"),
    (store::ASSIGNMENT_ENV, "disabled"),
];

/// tttnn's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit tttnn was built from (empty outside a git checkout).
pub const GIT_COMMIT: &str = env!("TTTNN_GIT_COMMIT");

#[cfg(test)]
mod tests {
    /// Tests and examples run with the environment the binary sets itself: `.cargo/config.toml`
    /// lists every variable of [`super::LIBRARY_ENV`] with its value.
    #[test]
    fn cargo_config_mirrors_the_library_env() {
        let config: toml::Table = toml::from_str(include_str!("../.cargo/config.toml")).unwrap();
        let env = config["env"].as_table().unwrap();
        for (var, value) in super::LIBRARY_ENV {
            assert_eq!(env.get(var).and_then(|v| v.as_str()), Some(value), "{var}");
        }
    }
}
