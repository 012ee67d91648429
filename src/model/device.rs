//! Where and in what precision the model runs: the device, dtype and vision-backend choices as
//! given on the command line, and how `auto` resolves on this machine.

use std::{fmt, str::FromStr};

use tch::{Device, Kind};

use crate::error::{Error, Result};

/// Where the model runs, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA device 0 when libtorch can use one, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device {s:?}: use auto, cpu, cuda or cuda:N")),
        }
    }
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Auto if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            Self::Auto | Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                let count = tch::Cuda::device_count();
                if (n as i64) < count {
                    Ok(Device::Cuda(n))
                } else if count == 0 {
                    Err(Error::Model(format!(
                        "cuda:{n} requested but libtorch sees no usable CUDA device \
                         (no driver, or a CPU-only libtorch); use --device cpu"
                    )))
                } else {
                    Err(Error::Model(format!(
                        "cuda:{n} requested but only {count} CUDA device(s) are visible"
                    )))
                }
            }
        }
    }
}

/// The dtype asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DTypeChoice {
    /// bfloat16 where it is fast (CUDA, or a CPU with native bf16 instructions), then float16
    /// on CUDA, else float32 — among the dtypes the model was exported in.
    Auto,
    Fixed(DType),
}

impl FromStr for DTypeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            _ => s.parse().map(Self::Fixed),
        }
    }
}

impl DTypeChoice {
    pub fn resolve(self, device: Device, exported: &[DType]) -> DType {
        let preferred: &[DType] = match (self, device) {
            (Self::Fixed(d), _) => return d,
            (Self::Auto, Device::Cuda(_)) => &[DType::BFloat16, DType::Float16, DType::Float32],
            (Self::Auto, _) if cpu_has_native_bf16() => &[DType::BFloat16, DType::Float32],
            (Self::Auto, _) => &[DType::Float32],
        };
        preferred
            .iter()
            .copied()
            .find(|d| exported.contains(d))
            .or_else(|| exported.first().copied())
            .unwrap_or(DType::Float32)
    }
}

/// What runs the vision tower, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// The AOTInductor package compiled for this device and dtype when the model directory has
    /// one, else TorchScript.
    Auto,
    TorchScript,
    Aoti,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "torchscript" => Ok(Self::TorchScript),
            "aoti" => Ok(Self::Aoti),
            _ => Err(format!(
                "unknown backend {s:?}: use auto, torchscript or aoti"
            )),
        }
    }
}

/// Floating-point precision of the towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum DType {
    Float32,
    Float16,
    BFloat16,
}

impl DType {
    pub fn kind(self) -> Kind {
        match self {
            Self::Float32 => Kind::Float,
            Self::Float16 => Kind::Half,
            Self::BFloat16 => Kind::BFloat16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Float16 => "float16",
            Self::BFloat16 => "bfloat16",
        }
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "float32" | "fp32" => Ok(Self::Float32),
            "float16" | "fp16" | "half" => Ok(Self::Float16),
            "bfloat16" | "bf16" => Ok(Self::BFloat16),
            _ => Err(format!(
                "unknown dtype {s:?}: use float32, float16 or bfloat16"
            )),
        }
    }
}

impl TryFrom<String> for DType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// bf16 on a CPU without native instructions (AVX512-BF16 or AMX) is emulated and slower than
/// float32; with them oneDNN runs it about twice as fast (`make bench` measures both).
fn cpu_has_native_bf16() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|info| {
            info.lines().filter(|l| l.starts_with("flags")).any(|l| {
                l.split_whitespace()
                    .any(|f| f == "avx512_bf16" || f == "amx_bf16")
            })
        })
        .unwrap_or(false)
}

/// Human-readable device name (`cpu`, `cuda:0`).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".to_string(),
    }
}
