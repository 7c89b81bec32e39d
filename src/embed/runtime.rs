//! The ONNX Runtime library the encoder runs on: found and loaded once per process, its version,
//! and its CUDA execution provider, registered so that a failure is an error rather than ONNX
//! Runtime's silent fallback to the CPU (docs/pitfalls.md §2). `tttnn doctor` asks the same
//! questions.
use std::path::PathBuf;
use std::sync::OnceLock;

use ort::session::Session;

use crate::error::{Error, Result};

/// The ONNX Runtime version our `ort` build (api-31) is written against.
pub const ORT_VERSION: &str = "1.31";

static ORT_ENV: OnceLock<Result<(PathBuf, ort::environment::Environment)>> = OnceLock::new();

/// Finds ONNX Runtime's shared library: `TTTNN_ORT_DYLIB`, then `ORT_DYLIB_PATH`.
pub(crate) fn ort_library_path() -> Result<PathBuf> {
    let path = std::env::var_os("TTTNN_ORT_DYLIB")
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH"))
        .map(PathBuf::from)
        .ok_or_else(|| Error::Library {
            library: "ONNX Runtime",
            message: format!(
                "no library configured: set ORT_DYLIB_PATH to libonnxruntime.so.{ORT_VERSION}.x \
                 (scripts/setup installs it and writes .tttnn-env)"
            ),
        })?;
    if !path.is_file() {
        return Err(Error::Library {
            library: "ONNX Runtime",
            message: format!(
                "{} does not exist (expected libonnxruntime.so.{ORT_VERSION}.x)",
                path.display()
            ),
        });
    }
    Ok(path)
}

/// Loads ONNX Runtime once per process; returns the library's path and the environment.
pub fn init_ort() -> Result<&'static (PathBuf, ort::environment::Environment)> {
    ORT_ENV
        .get_or_init(|| {
            let path = ort_library_path()?;
            let env = ort::init_from(&path)
                .map_err(|e| {
                    Error::library(
                        "ONNX Runtime",
                        format!(
                            "cannot load {} (expected ONNX Runtime {ORT_VERSION}.x): {e}",
                            path.display()
                        ),
                    )
                })?
                .with_name("tttnn")
                .build()
                .map_err(|e| {
                    Error::library(
                        "ONNX Runtime",
                        format!("cannot start ONNX Runtime from {}: {e}", path.display()),
                    )
                })?;
            Ok((path, env))
        })
        .as_ref()
        // The error is cached for the process; each caller gets its own copy of the message.
        .map_err(|e| match e {
            Error::Library { library, message } => Error::library(library, message.clone()),
            other => Error::library("ONNX Runtime", other.to_string()),
        })
}

/// The loaded ONNX Runtime's version (`OrtGetApiBase()->GetVersionString()`, e.g. `1.31.1`); the
/// build-info string does not carry it in every build (the GPU wheel's says `git-branch=HEAD`).
pub fn ort_version() -> String {
    #[repr(C)]
    struct ApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const libc::c_void,
        get_version_string: unsafe extern "C" fn() -> *const libc::c_char,
    }
    let unknown = || "unknown".to_string();
    let Ok((path, _)) = init_ort() else {
        return unknown();
    };
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return unknown();
    };
    // SAFETY: the library is already loaded (RTLD_NOLOAD only returns a handle to it);
    // OrtGetApiBase and GetVersionString are ONNX Runtime's stable C entry points and return
    // pointers to static data.
    unsafe {
        let handle = libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if handle.is_null() {
            return unknown();
        }
        let sym = libc::dlsym(handle, c"OrtGetApiBase".as_ptr());
        if sym.is_null() {
            return unknown();
        }
        let get_base: unsafe extern "C" fn() -> *const ApiBase = std::mem::transmute(sym);
        let base = get_base();
        if base.is_null() {
            return unknown();
        }
        let v = ((*base).get_version_string)();
        if v.is_null() {
            return unknown();
        }
        std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned()
    }
}

/// Whether ONNX Runtime's CUDA execution provider loads: registers it on a throw-away session
/// builder, which loads `libonnxruntime_providers_cuda.so` and the CUDA libraries it needs.
pub fn cuda_provider_check() -> Result<()> {
    let (_, env) = init_ort()?;
    let builder = Session::builder(env).map_err(|e| Error::onnx("session builder", e))?;
    with_cuda(builder, false, "ONNX Runtime CUDA").map(|_| ())
}

/// Registers ONNX Runtime's CUDA execution provider with `error_on_failure`: ort falls back to the
/// CPU silently otherwise (onnxruntime#23372). TF32 is on by default in ORT's CUDA provider
/// (`use_tf32`), so it is set explicitly: fp32 must mean fp32. The error says what to install,
/// by its cause.
pub(super) fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
    tf32: bool,
    library: &'static str,
) -> Result<ort::session::builder::SessionBuilder> {
    let cuda = ort::ep::CUDA::default()
        .with_tf32(tf32)
        .build()
        .error_on_failure();
    builder.with_execution_providers([cuda]).map_err(|e| {
        let e = e.to_string().trim_end().to_string();
        let hint = if e.contains("not enabled in this build") {
            "the CPU-only `onnxruntime` wheel has no CUDA provider; `scripts/setup --cuda` installs \
             `onnxruntime-gpu` and `TTTNN_CUDA=1 source .tttnn-env` selects it"
        } else {
            "the provider needs the NVIDIA driver (libcuda.so.1) and CUDA 13 / cuDNN 9 on \
             LD_LIBRARY_PATH: `scripts/setup --cuda`, then `TTTNN_CUDA=1 source .tttnn-env`"
        };
        Error::library(library, format!("{e} ({hint}; docs/gpu.md)"))
    })
}
