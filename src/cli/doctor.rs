//! `tttnn doctor`: what the native stack looks like on this machine.
use serde::Serialize;

use crate::error::Result;

/// Check libtorch, CUDA, ONNX Runtime, libduckdb and protoc.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also try to load libtorch's CUDA backend.
    #[arg(long)]
    pub cuda: bool,
}

/// One line of the report.
#[derive(Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub component: &'static str,
    /// Whether it works.
    pub ok: bool,
    /// Version, path or error.
    pub detail: String,
}

/// Runs every check.
pub fn checks(cuda: bool) -> Vec<Check> {
    let mut out = Vec::new();
    let t = tch::Tensor::from_slice(&[1f32, 2., 3.])
        .sum(tch::Kind::Float)
        .double_value(&[]);
    out.push(Check {
        component: "libtorch",
        ok: t == 6.0,
        detail: format!(
            "tch 0.24.0, expects torch {}; lib dir {}",
            crate::lm::TORCH_VERSION,
            std::env::var("TTTNN_LIBTORCH_LIB").unwrap_or_else(|_| "(rpath)".into())
        ),
    });
    if cuda {
        let r = crate::lm::Device::Cuda.resolve();
        out.push(Check {
            component: "libtorch CUDA",
            ok: r.is_ok(),
            detail: match r {
                Ok(_) => format!("{} device(s)", tch::Cuda::device_count()),
                Err(e) => e.to_string(),
            },
        });
    }
    out.push(match crate::embed::init_ort() {
        Ok((path, _)) => Check {
            component: "ONNX Runtime",
            ok: true,
            detail: path.display().to_string(),
        },
        Err(e) => Check {
            component: "ONNX Runtime",
            ok: false,
            detail: e.to_string(),
        },
    });
    let duck = duckdb::Connection::open_in_memory()
        .and_then(|c| c.query_row("SELECT version()", [], |r| r.get::<_, String>(0)));
    out.push(match duck {
        Ok(v) => Check {
            component: "libduckdb",
            ok: v.starts_with("v1.5"),
            detail: format!("DuckDB {v} (duckdb-rs expects 1.5.x)"),
        },
        Err(e) => Check {
            component: "libduckdb",
            ok: false,
            detail: e.to_string(),
        },
    });
    let protoc = std::process::Command::new("protoc")
        .arg("--version")
        .output();
    out.push(match protoc {
        Ok(o) if o.status.success() => Check {
            component: "protoc",
            ok: true,
            detail: String::from_utf8_lossy(&o.stdout).trim().to_string(),
        },
        _ => Check {
            component: "protoc",
            ok: false,
            detail: "not found (needed only to build lance; scripts/setup installs it)".into(),
        },
    });
    out
}

/// Prints the report; exits non-zero when something is broken.
pub fn run(args: Args) -> Result<()> {
    let checks = checks(args.cuda);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&checks)
                .map_err(|e| crate::Error::Internal(e.to_string()))?
        );
    } else {
        for c in &checks {
            println!(
                "{:<14} {:<4} {}",
                c.component,
                if c.ok { "ok" } else { "FAIL" },
                c.detail
            );
        }
    }
    match checks.iter().find(|c| !c.ok && c.component != "protoc") {
        Some(c) => Err(crate::Error::Library {
            library: c.component,
            message: c.detail.clone(),
        }),
        None => Ok(()),
    }
}
