//! The libtorch side: the two TorchScript towers on one device, in one dtype.
//!
//! Everything here blocks (libtorch calls), so callers on an async runtime must run it on a
//! dedicated thread.

use std::{fmt, path::Path, str::FromStr};

use tch::{CModule, Device, Kind, Tensor};

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

/// Floating-point precision of the towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The vision and text towers, loaded on one device in one dtype. Both return L2-normalised
/// embeddings.
pub struct Towers {
    vision: CModule,
    text: CModule,
    device: Device,
    dtype: DType,
}

impl Towers {
    /// Loads both TorchScript files onto `device`. `dtype` is the one they were exported in:
    /// tracing records SigLIP's cast of the pixels to the weights' dtype as a constant, so a
    /// traced tower cannot be converted to another dtype after export.
    pub fn load(vision: &Path, text: &Path, device: Device, dtype: DType) -> Result<Self> {
        let load = |path: &Path| -> Result<CModule> {
            let mut module = CModule::load_on_device(path, device)
                .map_err(|e| Error::Model(format!("cannot load {}: {e}", path.display())))?;
            module.set_eval();
            Ok(module)
        };
        Ok(Self {
            vision: load(vision)?,
            text: load(text)?,
            device,
            dtype,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `pixels`: `n` images, CHW float32, normalised. Returns `n × dim` float32 embeddings.
    pub fn embed_images(&self, pixels: &[f32], n: usize, size: u32) -> Result<Vec<f32>> {
        let side = size as i64;
        let input = Tensor::from_slice(pixels)
            .view([n as i64, 3, side, side])
            .to_device(self.device)
            .to_kind(self.dtype.kind());
        self.run(&self.vision, &input)
    }

    /// `ids`: `n` rows of `len` token ids. Returns `n × dim` float32 embeddings.
    pub fn embed_texts(&self, ids: &[i64], n: usize, len: usize) -> Result<Vec<f32>> {
        let input = Tensor::from_slice(ids)
            .view([n as i64, len as i64])
            .to_device(self.device);
        self.run(&self.text, &input)
    }

    fn run(&self, module: &CModule, input: &Tensor) -> Result<Vec<f32>> {
        let _guard = tch::no_grad_guard();
        let out = module.forward_ts(&[input])?;
        let out = out
            .to_kind(Kind::Float)
            .to_device(Device::Cpu)
            .contiguous()
            .view(-1);
        Ok(Vec::<f32>::try_from(&out)?)
    }
}

/// Human-readable device name (`cpu`, `cuda:0`).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".to_string(),
    }
}
