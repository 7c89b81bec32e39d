//! `tttnn doctor`: what the native stack looks like on this machine.
use serde::Serialize;

use tttnn::{Error, Result};

use super::ui::Printer;

/// Check libtorch, CUDA, ONNX Runtime, libduckdb and protoc.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also check the GPU (driver, name, memory), libtorch's CUDA backend and ONNX Runtime's CUDA provider.
    #[arg(long)]
    pub cuda: bool,
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Check {
    /// What was checked.
    pub component: &'static str,
    /// Whether it works.
    pub ok: bool,
    /// Version, path or error.
    pub detail: String,
}

/// Runs every check.
fn checks(cuda: bool) -> Vec<Check> {
    let mut out = Vec::new();
    let t = tch::Tensor::from_slice(&[1f32, 2., 3.])
        .sum(tch::Kind::Float)
        .double_value(&[]);
    out.push(Check {
        component: "libtorch",
        ok: t == 6.0,
        detail: format!(
            "tch 0.24.0, expects torch {}; lib dir {}",
            tttnn::lm::TORCH_VERSION,
            std::env::var("TTTNN_LIBTORCH_LIB").unwrap_or_else(|_| "(rpath)".into())
        ),
    });
    if cuda {
        out.push(match tttnn::lm::device::gpus() {
            Ok(g) if !g.is_empty() => Check {
                component: "GPU",
                ok: true,
                detail: g
                    .iter()
                    .map(|g| {
                        format!(
                            "{}: {} ({:.1} GiB)",
                            g.index,
                            g.name,
                            g.memory_bytes as f64 / (1u64 << 30) as f64
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            Ok(_) => Check {
                component: "GPU",
                ok: false,
                detail: "the CUDA driver sees no device".into(),
            },
            Err(e) => Check {
                component: "GPU",
                ok: false,
                detail: e.to_string(),
            },
        });
        let r = tttnn::Device::Cuda.to_tch();
        out.push(Check {
            component: "libtorch CUDA",
            ok: r.is_ok(),
            detail: match r {
                Ok(_) => format!(
                    "{} device(s), cuDNN {}",
                    tch::Cuda::device_count(),
                    if tch::Cuda::cudnn_is_available() {
                        "available"
                    } else {
                        "missing"
                    }
                ),
                Err(e) => e.to_string(),
            },
        });
    }
    out.push(match tttnn::embed::init_ort() {
        Ok((path, _)) => Check {
            component: "ONNX Runtime",
            ok: true,
            detail: format!(
                "{} (version {})",
                path.display(),
                tttnn::embed::ort_version()
            ),
        },
        Err(e) => Check {
            component: "ONNX Runtime",
            ok: false,
            detail: e.to_string(),
        },
    });
    if cuda {
        out.push(match tttnn::embed::cuda_provider_check() {
            Ok(()) => Check {
                component: "ORT CUDA",
                ok: true,
                detail: "CUDAExecutionProvider loads".into(),
            },
            Err(e) => Check {
                component: "ORT CUDA",
                ok: false,
                detail: e.to_string(),
            },
        });
    }
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
pub fn run(args: Args, p: &Printer) -> Result<()> {
    let checks = checks(args.cuda);
    if args.json {
        p.out(serde_json::to_string_pretty(&checks).map_err(|e| Error::json("doctor report", e))?)?;
    } else {
        for c in &checks {
            p.out(format!(
                "{:<14} {:<4} {}",
                c.component,
                if c.ok { "ok" } else { "FAIL" },
                c.detail
            ))?;
        }
    }
    match checks.iter().find(|c| !c.ok && c.component != "protoc") {
        Some(c) => Err(Error::library(c.component, c.detail.clone())),
        None => Ok(()),
    }
}
