//! Where the LM runs. tttnn links only libtorch's CPU libraries so one binary runs on machines
//! without CUDA; `cuda` loads `libtorch_cuda.so` at run time (tch-rs#907: CUDA goes undetected
//! unless that library is loaded), from `TTTNN_LIBTORCH_LIB` or the loader's search path.
use std::ffi::CString;

use crate::error::{Error, Result};

/// Loads `libtorch_cuda.so` into the process so libtorch registers its CUDA backend.
pub(crate) fn load_cuda() -> Result<()> {
    let candidates: Vec<String> = std::env::var("TTTNN_LIBTORCH_LIB")
        .ok()
        .map(|d| format!("{d}/libtorch_cuda.so"))
        .into_iter()
        .chain(std::iter::once("libtorch_cuda.so".to_string()))
        .collect();
    let mut errors = Vec::new();
    for c in &candidates {
        let name = CString::new(c.as_str())
            .map_err(|e| Error::setting("TTTNN_LIBTORCH_LIB", e.to_string()))?;
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

/// A CUDA device as the driver reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Gpu {
    /// Ordinal.
    pub index: i32,
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total device memory in bytes.
    pub memory_bytes: u64,
}

/// The CUDA devices the driver (`libcuda.so.1`) sees, read through the driver API so it needs no
/// CUDA toolkit; an error names what is missing on a machine without a driver or a GPU.
pub fn gpus() -> Result<Vec<Gpu>> {
    type Init = unsafe extern "C" fn(u32) -> i32;
    type Count = unsafe extern "C" fn(*mut i32) -> i32;
    type Get = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type Name = unsafe extern "C" fn(*mut libc::c_char, i32, i32) -> i32;
    type Mem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    let fail = |message: String| Error::library("CUDA driver", message);
    let lib = CString::new("libcuda.so.1").expect("no NUL");
    // SAFETY: dlopen with a valid C string; the handle is kept for the life of the process.
    let handle = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        return Err(fail(
            "libcuda.so.1 not found: no NVIDIA driver on this machine".into(),
        ));
    }
    let sym = |name: &str| -> Result<*mut libc::c_void> {
        let c = CString::new(name).expect("no NUL");
        // SAFETY: dlsym on a live handle with a valid C string.
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if p.is_null() {
            Err(fail(format!("libcuda.so.1 has no {name}")))
        } else {
            Ok(p)
        }
    };
    // SAFETY: the driver API's documented signatures (cuda.h), called with valid out-pointers.
    unsafe {
        let init: Init = std::mem::transmute(sym("cuInit")?);
        let count: Count = std::mem::transmute(sym("cuDeviceGetCount")?);
        let get: Get = std::mem::transmute(sym("cuDeviceGet")?);
        let name: Name = std::mem::transmute(sym("cuDeviceGetName")?);
        let mem: Mem = std::mem::transmute(sym("cuDeviceTotalMem_v2")?);
        let rc = init(0);
        if rc != 0 {
            return Err(fail(format!(
                "cuInit failed with CUDA error {rc} (no usable GPU?)"
            )));
        }
        let mut n = 0;
        if count(&mut n) != 0 {
            return Err(fail("cuDeviceGetCount failed".into()));
        }
        let mut out = Vec::new();
        for i in 0..n {
            let mut dev = 0;
            let mut buf = [0 as libc::c_char; 256];
            let mut bytes = 0usize;
            if get(&mut dev, i) != 0
                || name(buf.as_mut_ptr(), 256, dev) != 0
                || mem(&mut bytes, dev) != 0
            {
                return Err(fail(format!("cannot query CUDA device {i}")));
            }
            out.push(Gpu {
                index: i,
                name: std::ffi::CStr::from_ptr(buf.as_ptr())
                    .to_string_lossy()
                    .into_owned(),
                memory_bytes: bytes as u64,
            });
        }
        Ok(out)
    }
}
