//! tttnn's integration tests, one binary (as ripgrep and uv do): the real CLI and library on tiny
//! real inputs, one module per area, shared helpers in `util`.
mod baselines;
mod cli;
mod corpora;
mod errors;
mod gpu;
mod help;
mod lanes;
mod lm_golden;
mod real_model;
mod retrieval;
mod runner;
mod s3;
mod schedules;
mod stack;
mod store;
mod sweeps;
mod util;
