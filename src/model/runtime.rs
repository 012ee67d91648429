//! The libtorch side: the two TorchScript towers on one device, in one dtype.
//!
//! Everything here blocks (libtorch calls), so callers on an async runtime must run it on a
//! dedicated thread.

use std::{fmt, path::Path, str::FromStr, sync::Mutex};

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

/// The vision and text towers, loaded on one device in one dtype. Both return L2-normalised
/// embeddings.
pub struct Towers {
    vision: CModule,
    text: CModule,
    device: Device,
    dtype: DType,
    /// libtorch keeps this switch per thread, so it is set before every forward pass: the towers
    /// are loaded, warmed up and run on different threads.
    jit_optimize: bool,
    /// On CUDA: page-locked host memory for the pixels of a batch, kept and grown as needed
    /// (pinning per batch is slow, and libtorch warns on every call of its pinning API).
    pinned: Mutex<Option<Tensor>>,
}

impl Towers {
    /// Loads both TorchScript files onto `device`. `dtype` is the one they were exported in:
    /// tracing records SigLIP's cast of the pixels to the weights' dtype as a constant, so a
    /// traced tower cannot be converted to another dtype after export.
    pub fn load(
        vision: &Path,
        text: &Path,
        device: Device,
        dtype: DType,
        jit_optimize: bool,
    ) -> Result<Self> {
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
            jit_optimize,
            pinned: Mutex::new(None),
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `images`: CHW float32 rows, normalised, `3·size·size` each. Returns `n × dim` float32
    /// embeddings.
    pub fn embed_images(&self, images: &[&[f32]], size: u32) -> Result<Vec<f32>> {
        let side = size as i64;
        let per_image = (3 * side * side) as usize;
        let n = images.len() as i64;
        for (i, image) in images.iter().enumerate() {
            assert_eq!(
                image.len(),
                per_image,
                "image {i} has the wrong number of values"
            );
        }
        let mut pinned = self.pinned.lock().expect("pinned buffer lock");
        let host = match self.device {
            Device::Cuda(_) => {
                if pinned.as_ref().is_none_or(|buffer| buffer.size()[0] < n) {
                    let fresh = Tensor::empty([n, 3, side, side], (Kind::Float, Device::Cpu));
                    *pinned = Some(fresh.pin_memory(self.device));
                }
                pinned.as_ref().expect("just allocated").narrow(0, 0, n)
            }
            _ => Tensor::empty([n, 3, side, side], (Kind::Float, Device::Cpu)),
        };
        // One copy per image, straight into the tensor's memory (a batch of so400m-384 images is
        // over 100 MB; every extra pass over it is time the GPU waits).
        // SAFETY: `host` is a contiguous float32 CPU tensor (a fresh one, or the leading rows of
        // the pinned buffer, which only this call uses while it holds the lock) with exactly
        // `n · per_image` elements; each row is checked above to hold `per_image` values.
        unsafe {
            let dst = host.data_ptr() as *mut f32;
            for (i, image) in images.iter().enumerate() {
                std::ptr::copy_nonoverlapping(image.as_ptr(), dst.add(i * per_image), per_image);
            }
        }
        // The copy to the GPU does not block the host; the forward pass is queued behind it on
        // the same stream, and `run` waits for the result, so the buffer is free again after it.
        let input = match self.device {
            Device::Cuda(_) => host.to_device_(self.device, Kind::Float, true, false),
            _ => host,
        }
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
        tch::jit::set_graph_executor_optimize(self.jit_optimize);
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
