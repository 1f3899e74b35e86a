//! Safe wrappers over clipflow's C++ shim (core/shim/shim.cpp): the libtorch
//! features tch 0.24 does not bind.
//!
//! - Autocast per device type with a chosen lower-precision dtype, so
//!   `--precision amp_bf16` can run in bfloat16 (tch only toggles CUDA
//!   autocast, in its default float16). [`AutocastGuard`] scopes it the way
//!   `with torch.autocast(device_type, dtype):` does.
//! - [`fused_adamw_step`]: one step of `torch.optim.AdamW(fused=True)`
//!   through libtorch's fused kernel (`_fused_adamw_`, on CPU and CUDA).
//!
//! - [`device_memory`]: a device's free and total memory.
//! - [`torch_version`] and [`nccl_built`]: what clipflow was built with.
//!
//! Activation checkpointing, also in the shim, has its own module:
//! [`crate::activation_checkpoint`].
//!
//! Errors raised inside libtorch come back as `anyhow` errors, never aborts.
//! Autocast state is per thread, like libtorch's, so the guard is not `Send`.

use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// The version of the libtorch clipflow was built against (its headers'
/// `TORCH_VERSION`, e.g. `2.11.0`).
pub fn torch_version() -> &'static str {
    // SAFETY: the shim returns a string literal, static and NUL-terminated.
    unsafe { CStr::from_ptr(clipflow_torch_version()) }
        .to_str()
        .unwrap_or("unknown")
}

/// Whether this build has c10d's NCCL backend (NCCL's and CUDA's headers
/// were found when it was built).
pub fn nccl_built() -> bool {
    // SAFETY: a plain function of no arguments.
    unsafe { clipflow_nccl_built() }
}

/// A device's memory, as its caching allocator reports it (what
/// `torch.cuda.mem_get_info` returns): memory the allocator holds counts as
/// used, whether or not a tensor occupies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// `device`'s free and total memory; `None` for the host, whose memory the
/// allocator does not account.
pub fn device_memory(device: Device) -> Result<Option<DeviceMemory>> {
    let index = match device {
        Device::Cpu => return Ok(None),
        Device::Cuda(index) => index as c_int,
        Device::Mps => 0,
        Device::Vulkan => bail!("clipflow does not read the memory of Vulkan devices"),
    };
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: both pointers are to live locals the shim only writes.
    check(unsafe { clipflow_device_memory(device_type(device)?, index, &mut free, &mut total) })?;
    Ok(Some(DeviceMemory {
        free_bytes: free as u64,
        total_bytes: total as u64,
    }))
}

/// What tch's `C_tensor` handles point to: an `at::Tensor`, opaque here.
#[repr(C)]
pub(crate) struct AtTensor {
    _private: [u8; 0],
}

extern "C" {
    fn clipflow_shim_free_error(message: *mut c_char);
    fn clipflow_torch_version() -> *const c_char;
    fn clipflow_nccl_built() -> bool;
    fn clipflow_device_memory(
        device_type: c_int,
        device_index: c_int,
        free: *mut usize,
        total: *mut usize,
    ) -> *mut c_char;
    fn clipflow_autocast_is_enabled(device_type: c_int, enabled: *mut bool) -> *mut c_char;
    fn clipflow_autocast_set_enabled(device_type: c_int, enabled: bool) -> *mut c_char;
    fn clipflow_autocast_dtype(device_type: c_int, scalar_type: *mut c_int) -> *mut c_char;
    fn clipflow_autocast_set_dtype(device_type: c_int, scalar_type: c_int) -> *mut c_char;
    fn clipflow_autocast_increment_nesting() -> *mut c_char;
    fn clipflow_autocast_decrement_nesting(depth: *mut c_int) -> *mut c_char;
    fn clipflow_autocast_clear_cache() -> *mut c_char;
    fn clipflow_fused_adamw_step(
        params: *const *const AtTensor,
        grads: *const *const AtTensor,
        exp_avgs: *const *const AtTensor,
        exp_avg_sqs: *const *const AtTensor,
        state_steps: *const *const AtTensor,
        count: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
    ) -> *mut c_char;
}

/// Turns the shim's error convention (null on success, else a message the
/// caller frees) into a `Result`.
pub(crate) fn check(error: *mut c_char) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string malloc'd by the
    // shim; it is read once and then freed by the shim's own allocator.
    let message = unsafe {
        let text = CStr::from_ptr(error).to_string_lossy().into_owned();
        clipflow_shim_free_error(error);
        text
    };
    bail!("libtorch: {message}")
}

/// libtorch's `c10::DeviceType` number for a tch device.
fn device_type(device: Device) -> Result<c_int> {
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
        Device::Mps => Ok(13),
        Device::Vulkan => bail!("autocast is not supported on Vulkan devices"),
    }
}

/// libtorch's `c10::ScalarType` number for the dtypes autocast can lower to.
fn autocast_scalar_type(dtype: Kind) -> Result<c_int> {
    match dtype {
        Kind::Half => Ok(5),
        Kind::Float => Ok(6),
        Kind::BFloat16 => Ok(15),
        other => bail!("autocast dtype must be Half, BFloat16 or Float, not {other:?}"),
    }
}

fn autocast_kind(scalar_type: c_int) -> Result<Kind> {
    match scalar_type {
        5 => Ok(Kind::Half),
        6 => Ok(Kind::Float),
        15 => Ok(Kind::BFloat16),
        other => {
            bail!("libtorch reported autocast scalar type {other}, which clipflow does not know")
        }
    }
}

/// Whether autocast is on for `device`'s type on this thread.
pub fn is_autocast_enabled(device: Device) -> Result<bool> {
    let mut enabled = false;
    // SAFETY: `enabled` outlives the call, which only writes to it.
    check(unsafe { clipflow_autocast_is_enabled(device_type(device)?, &mut enabled) })?;
    Ok(enabled)
}

/// Turns autocast on or off for `device`'s type on this thread.
pub fn set_autocast_enabled(device: Device, enabled: bool) -> Result<()> {
    // SAFETY: plain values in, error message out.
    check(unsafe { clipflow_autocast_set_enabled(device_type(device)?, enabled) })
}

/// The dtype autocast lowers to on `device`'s type (libtorch's defaults:
/// Half on CUDA, BFloat16 on CPU).
pub fn autocast_dtype(device: Device) -> Result<Kind> {
    let mut scalar_type: c_int = 0;
    // SAFETY: `scalar_type` outlives the call, which only writes to it.
    check(unsafe { clipflow_autocast_dtype(device_type(device)?, &mut scalar_type) })?;
    autocast_kind(scalar_type)
}

/// Sets the dtype autocast lowers to on `device`'s type.
pub fn set_autocast_dtype(device: Device, dtype: Kind) -> Result<()> {
    let scalar_type = autocast_scalar_type(dtype)?;
    // SAFETY: plain values in, error message out.
    check(unsafe { clipflow_autocast_set_dtype(device_type(device)?, scalar_type) })
}

/// Drops the lower-precision copies of weights autocast caches while on.
pub fn clear_autocast_cache() -> Result<()> {
    // SAFETY: no arguments; error message out.
    check(unsafe { clipflow_autocast_clear_cache() })
}

/// Autocast on for one device type in `dtype` until dropped, then the
/// previous enabled flag and dtype come back; the cast cache is cleared when
/// the outermost guard of the thread drops (as `torch.autocast` does).
pub struct AutocastGuard {
    device: Device,
    previous_enabled: bool,
    previous_dtype: Kind,
    /// Autocast state is thread-local: the guard must drop on its thread.
    _not_send: PhantomData<*const ()>,
}

impl AutocastGuard {
    /// A guard when `dtype` is given (the precision autocasts), else none.
    pub fn when(device: Device, dtype: Option<Kind>) -> Result<Option<Self>> {
        dtype.map(|dtype| Self::new(device, dtype)).transpose()
    }

    pub fn new(device: Device, dtype: Kind) -> Result<Self> {
        let previous_enabled = is_autocast_enabled(device)?;
        let previous_dtype = autocast_dtype(device)?;
        set_autocast_dtype(device, dtype)?;
        set_autocast_enabled(device, true)?;
        // SAFETY: no arguments; error message out.
        check(unsafe { clipflow_autocast_increment_nesting() })?;
        Ok(Self {
            device,
            previous_enabled,
            previous_dtype,
            _not_send: PhantomData,
        })
    }

    fn restore(&self) -> Result<()> {
        let mut depth: c_int = 0;
        // SAFETY: `depth` outlives the call, which only writes to it.
        check(unsafe { clipflow_autocast_decrement_nesting(&mut depth) })?;
        if depth == 0 {
            clear_autocast_cache()?;
        }
        set_autocast_enabled(self.device, self.previous_enabled)?;
        set_autocast_dtype(self.device, self.previous_dtype)
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        // `new` already ran the same calls for this device and dtype, so
        // libtorch has no reason to refuse them now; if it does, say so.
        if let Err(error) = self.restore() {
            eprintln!("clipflow: restoring autocast state failed: {error:#}");
        }
    }
}

/// AdamW's hyperparameters, as `torch.optim.AdamW` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One step of `torch.optim.AdamW(fused=True)` (no amsgrad, not maximising)
/// over parallel lists: each `state_steps` counter (a float32 scalar tensor)
/// advances by one, then libtorch's fused kernel updates `params`,
/// `exp_avgs` and `exp_avg_sqs` in place from `grads`, outside autograd.
/// All tensors live on one device (CPU or CUDA); each grad and moment is
/// contiguous with its param's shape and dtype.
pub fn fused_adamw_step(
    params: &mut [Tensor],
    grads: &[Tensor],
    exp_avgs: &mut [Tensor],
    exp_avg_sqs: &mut [Tensor],
    state_steps: &mut [Tensor],
    config: &AdamWConfig,
) -> Result<()> {
    check_adamw_inputs(params, grads, exp_avgs, exp_avg_sqs, state_steps)?;
    let handles = |tensors: &[Tensor]| -> Vec<*const AtTensor> {
        tensors.iter().map(|t| t.as_ptr().cast()).collect()
    };
    let (params, grads) = (handles(params), handles(grads));
    let (exp_avgs, exp_avg_sqs) = (handles(exp_avgs), handles(exp_avg_sqs));
    let state_steps = handles(state_steps);
    // SAFETY: each list holds `params.len()` live tensor handles borrowed for
    // the call, and check_adamw_inputs made sure the kernel, which indexes
    // each grad and moment by its param's flat layout, stays in bounds.
    check(unsafe {
        clipflow_fused_adamw_step(
            params.as_ptr(),
            grads.as_ptr(),
            exp_avgs.as_ptr(),
            exp_avg_sqs.as_ptr(),
            state_steps.as_ptr(),
            params.len(),
            config.lr,
            config.beta1,
            config.beta2,
            config.weight_decay,
            config.eps,
        )
    })
    .map_err(|error| error.context("fused AdamW step"))
}

/// The fused kernel trusts its inputs: on CPU it walks raw memory by each
/// param's element count, so a grad of another shape, layout or device would
/// be read out of bounds or in the wrong order. Refuse those here.
fn check_adamw_inputs(
    params: &[Tensor],
    grads: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    state_steps: &[Tensor],
) -> Result<()> {
    let count = params.len();
    let lists = [
        ("grads", grads),
        ("exp_avgs", exp_avgs),
        ("exp_avg_sqs", exp_avg_sqs),
    ];
    for (name, list) in lists.iter().chain([&("state_steps", state_steps)]) {
        if list.len() != count {
            bail!("fused AdamW: {count} params but {} {name}", list.len());
        }
    }
    let Some(device) = params.first().map(Tensor::device) else {
        return Ok(());
    };
    for (i, param) in params.iter().enumerate() {
        if param.device() != device || !param.is_contiguous() {
            bail!("fused AdamW: params[{i}] must be contiguous and on {device:?}");
        }
        for (name, list) in &lists {
            let tensor = &list[i];
            if tensor.size() != param.size()
                || tensor.kind() != param.kind()
                || tensor.device() != device
                || !tensor.is_contiguous()
            {
                bail!(
                    "fused AdamW: {name}[{i}] ({:?} {:?} on {:?}) must be contiguous with \
                     params[{i}]'s shape {:?}, dtype {:?} and device {device:?}",
                    tensor.size(),
                    tensor.kind(),
                    tensor.device(),
                    param.size(),
                    param.kind(),
                );
            }
        }
        let step = &state_steps[i];
        if step.numel() != 1 || step.device() != device {
            bail!("fused AdamW: state_steps[{i}] must be a scalar tensor on {device:?}");
        }
    }
    Ok(())
}
