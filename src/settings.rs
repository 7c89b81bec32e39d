//! Settings structs that are also clap arguments (`runner::RunConfig`, `ingest::Ingest`): their
//! defaults are written once, as clap `default_value`s, and read back here for library callers.
use clap::{Args, Command, FromArgMatches};

/// `T` with every field at its declared default, no flag or env var read: a setting without a
/// default must be optional.
pub(crate) fn declared_defaults<T: Args + FromArgMatches>() -> T {
    let cmd =
        T::augment_args(Command::new("defaults").no_binary_name(true)).mut_args(|a| a.env(None));
    let matches = cmd
        .try_get_matches_from(std::iter::empty::<String>())
        .expect("every setting has a default or is optional");
    T::from_arg_matches(&matches).expect("the defaults parse")
}
