//! Where a model runs: one device type for the LM (libtorch) and the encoder (ONNX Runtime), so a
//! run, an ingest and `smoke` name the device the same way.
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Compute device for the LM and the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU: libtorch's CPU backend, ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// CUDA device 0: libtorch's CUDA backend, ONNX Runtime's CUDA execution provider; an error if
    /// the loaded libraries lack it.
    Cuda,
}

impl Device {
    /// Memory a run may plan with, in bytes: available RAM on the CPU (`MemAvailable`), the GPU's
    /// total memory on CUDA (from `nvidia-smi`); None when it cannot be read.
    pub fn memory_bytes(self) -> Option<u64> {
        match self {
            Device::Cpu => {
                let info = std::fs::read_to_string("/proc/meminfo").ok()?;
                let kb = info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
                Some(
                    kb.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()?
                        * 1024,
                )
            }
            Device::Cuda => {
                let out = std::process::Command::new("nvidia-smi")
                    .args([
                        "--query-gpu=memory.total",
                        "--format=csv,noheader,nounits",
                        "-i",
                        "0",
                    ])
                    .output()
                    .ok()?;
                let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
                Some(mib * 1024 * 1024)
            }
        }
    }

    /// The tch device, loading CUDA support first when asked for.
    pub fn to_tch(self) -> Result<tch::Device> {
        match self {
            Device::Cpu => Ok(tch::Device::Cpu),
            Device::Cuda => {
                crate::lm::device::load_cuda()?;
                if !tch::Cuda::is_available() {
                    return Err(Error::library(
                        "libtorch",
                        "libtorch_cuda loaded but no CUDA device is visible",
                    ));
                }
                Ok(tch::Device::Cuda(0))
            }
        }
    }
}
