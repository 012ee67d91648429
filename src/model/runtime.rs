//! The libtorch side: the two towers on one device, in one dtype — TorchScript, or for the vision
//! tower an AOTInductor package where one was compiled for the device.
//!
//! Everything here blocks (libtorch calls), so callers on an async runtime must run it on a
//! dedicated thread.

use std::{path::Path, sync::Mutex};

use tch::{CModule, Device, Kind, Tensor};

use super::aoti::AotiPackage;
use super::device::{BackendChoice, DType};
use super::image::Pixels;
use super::manifest::TowerFiles;
use crate::error::{Error, Result};

/// How to run the towers, beyond device and dtype.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub backend: BackendChoice,
    /// TorchScript's optimising executor; see `--jit-optimize`.
    pub jit_optimize: bool,
    /// The most images the caller puts in one pass: page-locked buffers are sized for it.
    pub largest_batch: usize,
    /// Floats in the model's largest image (a NaFlex model's at its largest budget): every
    /// page-locked buffer holds `largest_batch` of them, so that any pass fits any buffer.
    pub largest_image: usize,
}

/// The vision tower as loaded.
enum Vision {
    TorchScript(CModule),
    Compiled {
        package: AotiPackage,
        max_batch: usize,
        /// The package's size: its weights are not reachable from here.
        bytes: u64,
    },
}

/// The vision and text towers, loaded on one device in one dtype. Both return L2-normalised
/// embeddings.
pub struct Towers {
    vision: Vision,
    text: CModule,
    device: Device,
    dtype: DType,
    /// libtorch keeps this switch per thread, so it is set before every forward pass: the towers
    /// are loaded, warmed up and run on different threads.
    jit_optimize: bool,
    /// On CUDA: page-locked host buffers for the pixels of a pass, reused (pinning per batch is
    /// slow, and libtorch warns on every call of its pinning API). A pass takes one out while it
    /// is staged or running, so two passes never share one; there are as many as passes in flight.
    /// Each holds `pinned_values` floats or more (`largest_batch` of the largest image), so
    /// that a larger batch than the last, or a NaFlex pass at a larger budget, never has to pin
    /// a new buffer (tens of milliseconds for 100 MB) while requests wait. Flat: a NaFlex model's
    /// passes differ in shape.
    pinned: Mutex<Vec<Tensor>>,
    pinned_values: i64,
}

impl Towers {
    /// Loads both towers of one dtype from `dir` onto `device`. `dtype` is the one they were
    /// exported in: tracing records SigLIP's cast of the pixels to the weights' dtype as a
    /// constant, so a traced tower cannot be converted to another dtype after export.
    pub fn load(
        dir: &Path,
        files: &TowerFiles,
        device: Device,
        dtype: DType,
        opts: RunOptions,
    ) -> Result<Self> {
        let load = |path: &Path| -> Result<CModule> {
            let mut module = CModule::load_on_device(path, device)
                .map_err(|e| Error::Model(format!("cannot load {}: {e}", path.display())))?;
            module.set_eval();
            Ok(module)
        };
        let kind = device_kind(device);
        let compiled = files.compiled_vision.get(kind);
        let vision = match (opts.backend, compiled) {
            (BackendChoice::Auto | BackendChoice::Aoti, Some(c)) => Vision::Compiled {
                package: AotiPackage::load(&dir.join(&c.file), device)?,
                max_batch: c.max_batch,
                bytes: std::fs::metadata(dir.join(&c.file)).map_or(0, |m| m.len()),
            },
            (BackendChoice::Aoti, None) => {
                return Err(Error::Model(format!(
                    "--backend aoti: {} has no compiled {dtype} vision tower for {kind}; run \
                     `python -m siglip_export compile --model-dir {} --device {kind} --dtype {dtype}` \
                     on this machine, or use --backend torchscript",
                    dir.display(),
                    dir.display()
                )))
            }
            (BackendChoice::Auto | BackendChoice::TorchScript, _) => {
                Vision::TorchScript(load(&dir.join(&files.vision))?)
            }
        };
        Ok(Self {
            vision,
            text: load(&dir.join(&files.text))?,
            device,
            dtype,
            jit_optimize: opts.jit_optimize,
            pinned: Mutex::new(Vec::new()),
            pinned_values: (opts.largest_batch * opts.largest_image) as i64,
        })
    }

    /// `torchscript` or `aoti`: what runs the vision tower.
    pub fn backend(&self) -> &'static str {
        match self.vision {
            Vision::TorchScript(_) => "torchscript",
            Vision::Compiled { .. } => "aoti",
        }
    }

    /// The most images one vision pass accepts (a compiled tower's limit), if any.
    pub fn max_batch(&self) -> Option<usize> {
        match self.vision {
            Vision::TorchScript(_) => None,
            Vision::Compiled { max_batch, .. } => Some(max_batch),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Bytes of both towers' parameters and buffers on the device (a compiled vision tower
    /// counts as its package's size).
    pub fn parameter_bytes(&self) -> u64 {
        let module_bytes = |module: &CModule| -> u64 {
            module.named_parameters().map_or(0, |tensors| {
                tensors
                    .iter()
                    .map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
                    .sum()
            })
        };
        let vision = match &self.vision {
            Vision::TorchScript(module) => module_bytes(module),
            Vision::Compiled { bytes, .. } => *bytes,
        };
        vision + module_bytes(&self.text)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// A vision pass in three steps, so that a caller can overlap passes. First, copies the
    /// pass's pixels into host memory for the device (page-locked on CUDA) — only host work: on
    /// CUDA it can overlap the previous pass, which runs on the GPU meanwhile. `images`: each
    /// image's `pixel_values`, normalised, of shape `dims` (`[3, size, size]`, or a NaFlex
    /// model's `[M, 3·P²]`, whose images also carry their grids).
    pub fn stage_images(&self, images: &[&Pixels], dims: &[i64]) -> Result<StagedImages> {
        let per_image = dims.iter().product::<i64>() as usize;
        let n = images.len() as i64;
        if let Some(max) = self.max_batch().filter(|&max| images.len() > max) {
            return Err(Error::InvalidArgument(format!(
                "{n} images in one pass; the compiled vision tower accepts at most {max}"
            )));
        }
        for (i, image) in images.iter().enumerate() {
            assert_eq!(
                image.values.len(),
                per_image,
                "image {i} has the wrong number of values"
            );
        }
        let values = n * per_image as i64;
        let buffer = match self.device {
            Device::Cuda(_) => {
                let pooled = self.pinned.lock().expect("pinned pool lock").pop();
                Some(match pooled.filter(|b| b.size()[0] >= values) {
                    Some(buffer) => buffer,
                    None => Tensor::f_empty(
                        [values.max(self.pinned_values)],
                        (Kind::Float, Device::Cpu),
                    )?
                    .f_pin_memory(self.device)?,
                })
            }
            _ => None,
        };
        let host = match &buffer {
            Some(buffer) => buffer.f_narrow(0, 0, values)?,
            None => Tensor::f_empty([values], (Kind::Float, Device::Cpu))?,
        };
        // One copy per image, straight into the tensor's memory (a batch of so400m-384 images is
        // over 100 MB; every extra pass over it is time the GPU waits).
        // SAFETY: `host` is a contiguous float32 CPU tensor (a fresh one, or the leading values
        // of a pinned buffer taken out of the pool, so no other pass uses it) with exactly
        // `n · per_image` elements; each image is checked above to hold `per_image` values.
        unsafe {
            let dst = host.data_ptr() as *mut f32;
            for (i, image) in images.iter().enumerate() {
                std::ptr::copy_nonoverlapping(
                    image.values.as_ptr(),
                    dst.add(i * per_image),
                    per_image,
                );
            }
        }
        let host = host.f_view([&[n], dims].concat().as_slice())?;
        let grids = match images.first().and_then(|image| image.grid) {
            None => None,
            Some(_) => Some(patch_inputs(images, dims[0])?),
        };
        Ok(StagedImages {
            host,
            grids,
            buffer,
        })
    }

    /// Sends staged pixels to the device and queues the vision tower on them. On CUDA this
    /// returns once the work is queued; on the CPU, once it is done.
    pub fn submit_images(&self, staged: StagedImages) -> Result<SubmittedImages> {
        // The copy to the GPU does not block the host; the forward pass is queued behind it on
        // the same stream, and `finish_images` waits for the result.
        let input = match self.device {
            Device::Cuda(_) => staged
                .host
                .f_to_device_(self.device, Kind::Float, true, false)?,
            _ => staged.host,
        }
        .f_to_kind(self.dtype.kind())?;
        let _guard = tch::no_grad_guard();
        let out = match (&self.vision, staged.grids) {
            (Vision::TorchScript(module), None) => self.forward(module, &[input])?,
            (Vision::TorchScript(module), Some((mask, shapes))) => self.forward(
                module,
                &[
                    input,
                    mask.f_to_device(self.device)?,
                    shapes.f_to_device(self.device)?,
                ],
            )?,
            (Vision::Compiled { package, .. }, None) => package.run(&input)?,
            (Vision::Compiled { .. }, Some(_)) => {
                return Err(Error::Inference(
                    "a compiled vision tower takes square images only".into(),
                ))
            }
        };
        Ok(SubmittedImages {
            out,
            buffer: staged.buffer,
        })
    }

    /// Waits for a submitted pass and returns its `n × dim` float32 embeddings.
    pub fn finish_images(&self, submitted: SubmittedImages) -> Result<Vec<f32>> {
        let result = to_host(submitted.out);
        // The pass is complete (its result reached the host), so its pixels are free again. A
        // buffer dropped on an error path instead is safe too: libtorch's pinned-memory allocator
        // holds freed blocks until the copies that use them have finished.
        if let Some(buffer) = submitted.buffer {
            self.pinned.lock().expect("pinned pool lock").push(buffer);
        }
        result
    }

    /// `ids`: `n` rows of `len` token ids. Returns `n × dim` float32 embeddings.
    pub fn embed_texts(&self, ids: &[i64], n: usize, len: usize) -> Result<Vec<f32>> {
        let input = Tensor::f_from_slice(ids)?
            .f_view([n as i64, len as i64])?
            .f_to_device(self.device)?;
        let _guard = tch::no_grad_guard();
        to_host(self.forward(&self.text, &[input])?)
    }

    fn forward(&self, module: &CModule, inputs: &[Tensor]) -> Result<Tensor> {
        tch::jit::set_graph_executor_optimize(self.jit_optimize);
        Ok(module.forward_ts(inputs)?)
    }
}

/// A NaFlex pass's `pixel_attention_mask` ([n, M], int32: 1 for each image's real patches, the
/// first of its M) and `spatial_shapes` ([n, 2], int64: each grid's rows and columns), as
/// `Siglip2ImageProcessorPil` returns them.
fn patch_inputs(images: &[&Pixels], budget: i64) -> Result<(Tensor, Tensor)> {
    let mut mask = vec![0i32; images.len() * budget as usize];
    let mut shapes = Vec::with_capacity(2 * images.len());
    for (image, row) in images.iter().zip(mask.chunks_exact_mut(budget as usize)) {
        let grid = image.grid.ok_or_else(|| {
            Error::InvalidArgument("a NaFlex pass needs every image's grid".into())
        })?;
        if grid.rows == 0 || grid.cols == 0 || grid.patches() > row.len() {
            return Err(Error::InvalidArgument(format!(
                "a {}x{} grid of patches does not fit a budget of {budget}",
                grid.rows, grid.cols
            )));
        }
        row[..grid.patches()].fill(1);
        shapes.extend([i64::from(grid.rows), i64::from(grid.cols)]);
    }
    let n = images.len() as i64;
    Ok((
        Tensor::f_from_slice(&mask)?.f_view([n, budget])?,
        Tensor::f_from_slice(&shapes)?.f_view([n, 2])?,
    ))
}

/// A vision pass's pixels in host memory, ready to send.
pub struct StagedImages {
    /// The pass's rows (on CUDA, the leading values of `buffer`).
    host: Tensor,
    /// A NaFlex pass's `pixel_attention_mask` and `spatial_shapes`, on the host.
    grids: Option<(Tensor, Tensor)>,
    /// The pooled page-locked buffer, returned to the pool when the pass is finished.
    buffer: Option<Tensor>,
}

/// A vision pass queued on the device.
pub struct SubmittedImages {
    out: Tensor,
    buffer: Option<Tensor>,
}

/// Embeddings as float32 values on the host, row after row.
fn to_host(out: Tensor) -> Result<Vec<f32>> {
    let out = out
        .f_to_kind(Kind::Float)?
        .f_to_device(Device::Cpu)?
        .f_contiguous()?
        .f_view(-1)?;
    Ok(Vec::<f32>::try_from(&out)?)
}

/// The manifest's name for a device's kind (compiled packages are per kind, not per index).
fn device_kind(device: Device) -> &'static str {
    match device {
        Device::Cuda(_) => "cuda",
        _ => "cpu",
    }
}

/// Whether a libtorch error says that memory ran out: the batch may fit in smaller parts (the
/// inference worker retries it in halves). libtorch reports this only in the error's text, so
/// this is the one place that reads it: CUDA's caching allocator ("CUDA out of memory. Tried to
/// allocate …"; ROCm builds say "HIP out of memory"), the CUDA runtime ("CUDA error: out of
/// memory"), cuBLAS failing to allocate its workspace ("CUBLAS_STATUS_ALLOC_FAILED") and the CPU
/// allocator ("DefaultCPUAllocator: not enough memory").
pub fn is_out_of_memory(e: &Error) -> bool {
    let Error::Inference(message) = e else {
        return false;
    };
    let message = message.to_lowercase();
    [
        "out of memory",
        "cublas_status_alloc_failed",
        "not enough memory",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::is_out_of_memory;
    use crate::error::Error;

    #[test]
    fn out_of_memory_is_read_from_libtorchs_messages_and_nothing_else() {
        let inference = |m: &str| Error::Inference(m.into());
        for oom in [
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity)",
            "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
            "HIP out of memory. Tried to allocate 20.00 MiB",
            "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
            "DefaultCPUAllocator: not enough memory: you tried to allocate 1073741824 bytes.",
        ] {
            assert!(is_out_of_memory(&inference(oom)), "{oom}");
        }
        for other in [
            "CUDA error: device-side assert triggered",
            "CUDA error: an illegal memory access was encountered",
            "CUDA error: unspecified launch failure",
        ] {
            assert!(!is_out_of_memory(&inference(other)), "{other}");
        }
        // A caller's input that mentions memory is not the device running out of it.
        assert!(!is_out_of_memory(&Error::InvalidArgument(
            "out of memory".into()
        )));
    }
}
