//! Where the LM runs. tttnn links only libtorch's CPU libraries so one binary runs on machines
//! without CUDA; `cuda` loads `libtorch_cuda.so` at run time (tch-rs#907: CUDA goes undetected
//! unless that library is loaded), from `TTTNN_LIBTORCH_LIB` or the loader's search path.
use std::ffi::CString;

use crate::error::{Error, Result};

/// Compute device for the LM.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// libtorch on the CPU.
    Cpu,
    /// libtorch on CUDA device 0.
    Cuda,
}

impl Device {
    /// The tch device, loading CUDA support first when asked for.
    pub fn resolve(self) -> Result<tch::Device> {
        match self {
            Device::Cpu => Ok(tch::Device::Cpu),
            Device::Cuda => {
                load_cuda()?;
                if !tch::Cuda::is_available() {
                    return Err(Error::Library {
                        library: "libtorch",
                        message: "libtorch_cuda loaded but no CUDA device is visible".into(),
                    });
                }
                Ok(tch::Device::Cuda(0))
            }
        }
    }
}

/// Loads `libtorch_cuda.so` into the process so libtorch registers its CUDA backend.
pub fn load_cuda() -> Result<()> {
    let candidates: Vec<String> = std::env::var("TTTNN_LIBTORCH_LIB")
        .ok()
        .map(|d| format!("{d}/libtorch_cuda.so"))
        .into_iter()
        .chain(std::iter::once("libtorch_cuda.so".to_string()))
        .collect();
    let mut errors = Vec::new();
    for c in &candidates {
        let name = CString::new(c.as_str()).map_err(|e| Error::Internal(e.to_string()))?;
        // SAFETY: dlopen with a valid C string; the handle is kept for the life of the process.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !handle.is_null() {
            return Ok(());
        }
        // SAFETY: dlerror returns a thread-local C string or null.
        let msg = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_string()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        errors.push(format!("{c}: {msg}"));
    }
    Err(Error::Library {
        library: "libtorch",
        message: format!(
            "--device cuda needs libtorch_cuda.so of torch {}: {}",
            crate::lm::TORCH_VERSION,
            errors.join("; ")
        ),
    })
}
