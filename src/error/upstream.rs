//! What an upstream failure (Lance, DuckDB, the OS) means for the user: the machine refused (disk
//! full, permissions, limits: exit 2, say so plainly), the user's store or database is damaged or
//! is not one (bad input: exit 1), or something else (exit 2) — in every case a message without
//! the crate-source locations upstream errors carry (`/root/.cargo/registry/src/.../local.rs:273:40`).

/// The OS errors that mean the machine refused, each with what to do.
const REFUSALS: &[(i32, &str, &str)] = &[
    (28, "No space left on device", "no space left on the device: free space, then re-run the command"),
    (122, "Disk quota exceeded", "disk quota exceeded: free space or raise the quota, then re-run the command"),
    (27, "File too large", "a file reached the size limit (`ulimit -f`, or the file system's): raise it, then re-run the command"),
    (13, "Permission denied", "permission denied: give this user access, or choose another path"),
    (1, "Operation not permitted", "operation not permitted: give this user access, or choose another path"),
    (30, "Read-only file system", "the file system is read-only: choose a writable path"),
    (24, "Too many open files", "too many open files: raise the limit (`ulimit -n`), then re-run the command"),
];

/// What was committed survives a refused write (every commit is atomic): worth telling the user.
pub(crate) const KEPT: &str = "what was committed before is kept, and re-running resumes after it";

/// The refusal `e` (or a cause of it) reports, if it is one: what to tell the user.
pub(crate) fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(code) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
        {
            if let Some(r) = REFUSALS.iter().find(|r| r.0 == code) {
                return Some(r.2);
            }
        }
        cause = c.source();
    }
    refusal_in(&chain_text(e))
}

/// The refusal an error's text names (Lance and DuckDB keep the OS error only as text).
pub(crate) fn refusal_in(text: &str) -> Option<&'static str> {
    REFUSALS
        .iter()
        .find(|(code, name, _)| text.contains(name) || text.contains(&format!("(os error {code})")))
        .map(|r| r.2)
}

/// An error and its causes as one line, each cause added only where the text so far does not
/// already say it (`Io`'s message embeds its source, and zstd's error repeats its own: "incomplete
/// frame" once).
pub fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text = format!("{text}: {s}");
        }
        cause = c.source();
    }
    text
}

/// Where a Lance error says a store's own file is missing or corrupt, the bad-input message.
pub(crate) fn store_damage(text: &str) -> Option<String> {
    const RESTORE: &str =
        "restore the store from a copy, or ingest the corpus again into a new one";
    if let Some(at) = text.find("Not found: ") {
        let rest = &text[at + "Not found: ".len()..];
        let file = rest.split(", ").next().unwrap_or(rest).trim();
        let file = file.rsplit_once(".lance/").map_or(file, |(_, f)| f);
        return Some(format!(
            "store damaged: its file `{file}` is missing; {RESTORE}"
        ));
    }
    let lower = text.to_lowercase();
    let corrupt = [
        "corrupt",
        "failed to fill whole buffer",
        "does not have sufficient data",
        "unexpected eof",
        "invalid manifest",
    ];
    corrupt.iter().any(|c| lower.contains(c)).then(|| {
        format!(
            "store damaged: a file of it is corrupt ({}); {RESTORE}",
            clean(text)
        )
    })
}

/// `text` without the source locations, backtrace markers and wrapper names upstream errors add.
pub(crate) fn clean(text: &str) -> String {
    let mut s = text.to_string();
    // `location: Location { file: "...", line: 1576, column: 42 }` (lance's Debug output).
    while let Some(at) = s.find("location: Location {") {
        let end = s[at..].find('}').map_or(s.len(), |e| at + e + 1);
        s.replace_range(at..end, "");
    }
    let noise = [
        ", backtrace: MaybeBacktrace",
        "LanceError(IO): ",
        "lance error: ",
        ": Error code 1: Unknown error code",
    ];
    for n in noise {
        s = s.replace(n, "");
    }
    // `, /root/.cargo/registry/src/.../local.rs:273:40` and `, /rustc/<hash>/library/...rs:250:5`.
    let kept: Vec<&str> = s
        .split(", ")
        .filter(|part| !is_source_location(part.trim()))
        .collect();
    let s = kept.join(", ");
    // libtorch's C++ messages go on with where in its sources the exception was raised.
    let s = s
        .split_once("Exception raised from")
        .map_or(s.as_str(), |(head, _)| head);
    s.trim_end_matches([' ', ',', '\n']).to_string()
}

/// Whether `part` is a Rust source location (`.../file.rs:LINE:COL`).
fn is_source_location(part: &str) -> bool {
    let mut pieces = part.rsplitn(3, ':');
    let (Some(col), Some(line), Some(file)) = (pieces.next(), pieces.next(), pieces.next()) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(col) && digits(line) && file.ends_with(".rs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_found_by_code_and_by_text() {
        let full = std::io::Error::from_raw_os_error(28);
        assert!(refusal(&full).unwrap().starts_with("no space left"));
        let denied = std::io::Error::from_raw_os_error(13);
        assert!(refusal(&denied).unwrap().starts_with("permission denied"));
        assert!(refusal(&std::io::Error::from_raw_os_error(2)).is_none());
        assert!(
            refusal_in("IO Error: Could not write file \"x.wal\": No space left on device")
                .unwrap()
                .starts_with("no space left")
        );
        assert!(
            refusal_in("Generic LocalFileSystem error: Read-only file system (os error 30)")
                .unwrap()
                .contains("read-only")
        );
    }

    #[test]
    fn damage_and_locations_are_named_without_crate_paths() {
        let missing = "lance error: Not found: tmp/s3/documents.lance/data/1100.lance, /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/lance-io-14.0.2/src/local.rs:273:40";
        let m = store_damage(missing).unwrap();
        assert!(
            m.starts_with("store damaged: its file `data/1100.lance` is missing; restore"),
            "{m}"
        );
        let corrupt = "lance error: Encountered corrupt file binary mini-block: value offset at position 9 decreases, /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/lance-encoding-14.0.2/src/encodings/physical/binary.rs:769:20";
        let m = store_damage(corrupt).unwrap();
        assert!(!m.contains(".cargo") && !m.contains(".rs:"), "{m}");
        assert!(m.contains("binary mini-block"), "{m}");
        let short = "lance error: LanceError(IO): Generic LocalFileSystem error: failed to fill whole buffer, /rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/core/src/ops/function.rs:250:5";
        assert_eq!(
            clean(short),
            "Generic LocalFileSystem error: failed to fill whole buffer"
        );
        let debug = r#"IO { source: x, location: Location { file: "/root/.cargo/registry/src/a/object_store.rs", line: 1576, column: 42 }, backtrace: MaybeBacktrace }"#;
        assert_eq!(clean(debug), "IO { source: x,  }");
        assert!(store_damage("Invalid user input: bad nprobes").is_none());
        assert_eq!(
            clean("Parser Error: syntax error at or near \"x\": Error code 1: Unknown error code"),
            "Parser Error: syntax error at or near \"x\""
        );
    }
}
