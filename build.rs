//! Records the git commit tttnn was built from, so every run row says which code produced it, and
//! compiles the C++ shim (`csrc/`): libtorch ops tch 0.24 does not bind, against the headers of the
//! libtorch torch-sys links (`LIBTORCH`, from `scripts/setup` via `.tttnn-env`), with torch-sys's
//! own flags.
use std::path::PathBuf;
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

fn shim() {
    println!("cargo:rerun-if-changed=csrc/fused.cpp");
    let includes = libtorch_includes();
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
