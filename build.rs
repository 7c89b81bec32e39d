//! Records the git commit tttnn was built from, so every run row says which code produced it, and
//! compiles the C++ shim (`csrc/`): libtorch ops tch 0.24 does not bind, against the headers of the
//! libtorch torch-sys links (`LIBTORCH`, from `scripts/setup` via `.tttnn-env`), with torch-sys's
//! own flags.
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=TTTNN_GIT_COMMIT={commit}");
    shim();
    cuda_graphs_shim();
}

/// The libtorch include directories torch-sys compiles its own wrapper with.
fn libtorch_includes() -> Vec<PathBuf> {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(root) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        panic!("LIBTORCH is unset: run scripts/setup and `source .tttnn-env` (docs/build.md)");
    };
    let include = root.join("include");
    if !include.join("ATen/ops/_fused_adamw.h").is_file() {
        panic!(
            "{}: no ATen/ops/_fused_adamw.h: LIBTORCH is not the libtorch scripts/setup installs",
            include.display()
        );
    }
    vec![include.clone(), include.join("torch/csrc/api/include")]
}

/// Whether `output` was built from this `source` with these `inputs` (a stamp beside it): the
/// build script reruns on every commit (for the commit id), and the shims need not.
fn up_to_date(output: &Path, source: &str, inputs: &str) -> bool {
    let stamp = output.with_extension("stamp");
    // This script's own text stands for the compiler flags it gives.
    let want = format!(
        "{inputs}\n{}\n{}",
        std::fs::read_to_string(source).unwrap_or_default(),
        include_str!("build.rs")
    );
    let fresh = output.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want);
    if !fresh {
        // Written before the build; a failed build leaves no output, so it is not fresh either.
        let _ = std::fs::write(&stamp, want);
    }
    fresh
}

fn shim() {
    println!("cargo:rerun-if-changed=csrc/fused.cpp");
    let includes = libtorch_includes();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let lib = out.join("libtttnn_shim.a");
    if up_to_date(&lib, "csrc/fused.cpp", &format!("{includes:?}")) {
        // What cc's compile() prints for a C++ static library.
        println!("cargo:rustc-link-search=native={}", out.display());
        println!("cargo:rustc-link-lib=static=tttnn_shim");
        println!("cargo:rustc-link-lib=stdc++");
        return;
    }
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .includes(&includes)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/fused.cpp")
        .compile("tttnn_shim");
}

/// The CUDA torch wheel's own tree behind `LIBTORCH` (scripts/setup links `LIBTORCH/include` to
/// it): `torch/lib` with libtorch_cuda, and the CUDA runtime wheel's headers and library beside.
struct CudaTree {
    torch_lib: PathBuf,
    cuda_include: PathBuf,
    cuda_lib: PathBuf,
}

fn cuda_tree(includes: &[PathBuf]) -> Result<CudaTree, String> {
    let include = std::fs::canonicalize(&includes[0])
        .map_err(|e| format!("{}: {e}", includes[0].display()))?;
    let torch = include.parent().ok_or("no torch directory")?;
    let site = torch.parent().ok_or("no site-packages directory")?;
    let tree = CudaTree {
        torch_lib: torch.join("lib"),
        cuda_include: site.join("nvidia/cu13/include"),
        cuda_lib: site.join("nvidia/cu13/lib"),
    };
    for (path, what) in [
        (tree.torch_lib.join("libtorch_cuda.so"), "libtorch_cuda.so"),
        (tree.torch_lib.join("libc10_cuda.so"), "libc10_cuda.so"),
        (
            tree.cuda_include.join("cuda_runtime_api.h"),
            "the CUDA runtime headers",
        ),
        (
            tree.cuda_include.join("crt/host_config.h"),
            "CUDA's crt headers (nvidia-cuda-crt)",
        ),
        (tree.cuda_lib.join("libcudart.so.13"), "libcudart.so.13"),
    ] {
        if !path.exists() {
            return Err(format!("no {what} at {}", path.display()));
        }
    }
    Ok(tree)
}

/// Builds `libtttnn_cuda_graphs.so` (csrc/cuda_graphs.cpp) into OUT_DIR and tells the crate where
/// it is (`TTTNN_CUDA_GRAPHS_SHIM`), or why there is none (`TTTNN_CUDA_GRAPHS_SHIM_MISSING`): the
/// binary loads it only for `--cuda-graphs`, so a build without it still runs everything else.
fn cuda_graphs_shim() {
    println!("cargo:rerun-if-changed=csrc/cuda_graphs.cpp");
    let includes = libtorch_includes();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let lib = out.join("libtttnn_cuda_graphs.so");
    let built = cuda_tree(&includes).and_then(|tree| {
        // Headers installed later (scripts/setup adds CUDA's crt/) rebuild the shim.
        println!("cargo:rerun-if-changed={}", tree.cuda_include.display());
        let inputs = format!("{includes:?} {:?}", tree.cuda_include);
        if up_to_date(&lib, "csrc/cuda_graphs.cpp", &inputs) {
            return Ok(());
        }
        compile_cuda_graphs(&includes, &tree, &lib)
    });
    match built {
        Ok(()) => println!("cargo:rustc-env=TTTNN_CUDA_GRAPHS_SHIM={}", lib.display()),
        Err(why) => {
            println!("cargo:warning=no CUDA graph shim in this build: {why}");
            println!("cargo:rustc-env=TTTNN_CUDA_GRAPHS_SHIM_MISSING={why}");
        }
    }
}

fn compile_cuda_graphs(includes: &[PathBuf], tree: &CudaTree, lib: &Path) -> Result<(), String> {
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let mut cmd = compiler.to_command();
    cmd.args(["-shared", "-fPIC", "-O2", "-std=c++17", "-w"])
        .args(["-D_GLIBCXX_USE_CXX11_ABI=1", "-DGLOG_USE_GLOG_EXPORT"]);
    for i in includes.iter().chain([&tree.cuda_include]) {
        cmd.arg(format!("-I{}", i.display()));
    }
    cmd.arg("csrc/cuda_graphs.cpp")
        .arg("-o")
        .arg(lib)
        .arg(format!("-L{}", tree.torch_lib.display()))
        .arg(format!("-L{}", tree.cuda_lib.display()))
        .args([
            "-ltorch_cuda",
            "-lc10_cuda",
            "-ltorch_cpu",
            "-lc10",
            "-l:libcudart.so.13",
        ]);
    let output = cmd
        .output()
        .map_err(|e| format!("running the C++ compiler: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "compiling csrc/cuda_graphs.cpp failed: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .take(20)
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    Ok(())
}
