//! `tttnn --help` and every subcommand's help, compared with `tests/it/snapshots/help.txt`, so a
//! CLI change shows up in review. After a deliberate change: `TTTNN_BLESS=1 cargo test --test
//! integration help` rewrites the snapshot.
use crate::util::{ok, tttnn};

const SUBCOMMANDS: [&str; 13] = [
    "doctor",
    "smoke",
    "ingest",
    "index",
    "search",
    "neighbors",
    "eval",
    "run",
    "sql",
    "sweep",
    "compare",
    "report",
    "merge",
];

/// The help of `args`, with no `TTTNN_*` variable set (clap shows their values).
fn help(args: &[&str]) -> String {
    let mut cmd = tttnn();
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TTTNN_")) {
        cmd.env_remove(k);
    }
    ok(cmd.args(args).arg("--help").output().unwrap())
}

#[test]
fn help_matches_the_snapshot() {
    let top = help(&[]);
    // Every subcommand `tttnn --help` lists has its help in the snapshot.
    let listed: Vec<&str> = top
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert_eq!(listed, SUBCOMMANDS, "add a new subcommand to SUBCOMMANDS");
    let mut text = format!("$ tttnn --help\n{top}");
    for sub in SUBCOMMANDS {
        text += &format!("\n$ tttnn {sub} --help\n{}", help(&[sub]));
    }
    let path = crate::util::repo().join("tests/it/snapshots/help.txt");
    if std::env::var_os("TTTNN_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if want != text {
        let line = want
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(text.lines().count()));
        panic!(
            "help differs from {} at line {}:\n  snapshot: {:?}\n  now:      {:?}\n\
             (after a deliberate change: TTTNN_BLESS=1 cargo test --test integration help)",
            path.display(),
            line + 1,
            want.lines().nth(line).unwrap_or(""),
            text.lines().nth(line).unwrap_or("")
        );
    }
    // Every subcommand is listed in the top-level help.
    let top = help(&[]);
    for sub in SUBCOMMANDS {
        assert!(
            top.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub}"
        );
    }
}
