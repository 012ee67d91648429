//! AOTInductor packages (`python -m siglip_export compile`): the vision tower compiled ahead of
//! time into fused kernels for one kind of device, loaded through libtorch's package loader.
//!
//! tch binds TorchScript only, so `aoti.cpp` (built by `build.rs`) wraps the loader in four C
//! functions; tensors cross as the `at::Tensor*` handles tch itself uses.

use std::{
    ffi::{c_char, c_int, c_void, CStr, CString},
    path::Path,
};

use tch::{Device, Tensor};
use torch_sys::C_tensor;

use crate::error::{Error, Result};

extern "C" {
    fn siglip_aoti_load(
        path: *const c_char,
        device_index: c_int,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn siglip_aoti_run(
        loader: *mut c_void,
        input: *const C_tensor,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn siglip_aoti_free(loader: *mut c_void);
    fn siglip_aoti_free_error(error: *mut c_char);
}

/// A loaded package with one input tensor and one output tensor.
pub struct AotiPackage {
    loader: *mut c_void,
}

// SAFETY: the loader is a heap object with no thread affinity; `Towers` runs it from one thread
// at a time (the inference worker), and libtorch's loader serialises runs internally as well.
unsafe impl Send for AotiPackage {}

impl AotiPackage {
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| Error::Model(format!("{}: path contains a NUL byte", path.display())))?;
        let device_index = match device {
            Device::Cuda(n) => n as c_int,
            _ => -1,
        };
        let mut error = std::ptr::null_mut();
        // SAFETY: `c_path` is a valid C string for the call; `error` is written only on failure.
        let loader = unsafe { siglip_aoti_load(c_path.as_ptr(), device_index, &mut error) };
        if loader.is_null() {
            return Err(Error::Model(format!(
                "cannot load the compiled vision tower {}: {}",
                path.display(),
                take_error(error)
            )));
        }
        Ok(Self { loader })
    }

    /// Runs the package on `input` (on the package's device, in its dtype).
    pub fn run(&self, input: &Tensor) -> Result<Tensor> {
        let mut error = std::ptr::null_mut();
        // SAFETY: `loader` is live until drop; `input` outlives the call; a non-null result is a
        // fresh `at::Tensor*` that `Tensor::from_ptr` takes ownership of (tch frees it on drop).
        let out = unsafe { siglip_aoti_run(self.loader, input.as_ptr(), &mut error) };
        if out.is_null() {
            return Err(Error::Inference(format!(
                "compiled vision tower: {}",
                take_error(error)
            )));
        }
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

impl Drop for AotiPackage {
    fn drop(&mut self) {
        // SAFETY: `loader` came from `siglip_aoti_load` and is freed exactly once.
        unsafe { siglip_aoti_free(self.loader) }
    }
}

/// Copies and frees an error string from the shim.
fn take_error(error: *mut c_char) -> String {
    if error.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a non-null error is a NUL-terminated string from `strdup`, freed here once.
    unsafe {
        let message = CStr::from_ptr(error).to_string_lossy().into_owned();
        siglip_aoti_free_error(error);
        message
    }
}
