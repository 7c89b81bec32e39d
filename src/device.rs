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
