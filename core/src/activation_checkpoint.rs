//! Activation checkpointing, the role `torch.utils.checkpoint` plays for
//! OpenCLIP's `--grad-checkpointing`: [`checkpoint`] runs a function without
//! keeping its intermediate activations for backward, and backward runs it a
//! second time to get them back, trading compute for memory.
//!
//! The autograd machinery is C++ (core/shim/checkpoint.cpp, which documents
//! the scheme: what is saved, how autocast and RNG states are reproduced).
//! This module boxes the Rust closure for it and turns panics inside the
//! closure into errors: during the forward call as this function's `Err`,
//! during backward as the error of `Tensor::f_backward`.

use std::any::Any;
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result};
use tch::Tensor;

use crate::shim::{check, AtTensor};

/// The shim's `std::string` error slot, opaque here.
#[repr(C)]
struct CppString {
    _private: [u8; 0],
}

type CallFn = extern "C" fn(
    closure: *mut c_void,
    inputs: *const *const AtTensor,
    count: usize,
    output: *mut AtTensor,
    error: *mut CppString,
) -> bool;
type DropFn = extern "C" fn(closure: *mut c_void);

extern "C" {
    fn clipflow_checkpoint(
        call: CallFn,
        drop: DropFn,
        closure: *mut c_void,
        inputs: *const *const AtTensor,
        input_count: usize,
        params: *const *const AtTensor,
        param_count: usize,
        output: *mut *mut AtTensor,
    ) -> *mut c_char;
    fn clipflow_checkpoint_set_error(error: *mut CppString, message: *const c_char, length: usize);
    fn clipflow_checkpoint_set_output(output: *mut AtTensor, tensor: *const AtTensor);
}

/// The closure behind the shim's `void *closure`. The autograd engine may run
/// backward on another thread than the forward's; the mutex makes the shared
/// reference it calls through sound for any `Send` closure.
struct Closure<F>(Mutex<F>);

/// Runs `f(inputs)` so that its intermediate activations are not kept for
/// backward: the call itself records no graph and keeps only `inputs`;
/// backward calls `f` again with gradients on (on fresh leaves holding the
/// same values) and differentiates that.
///
/// `params` lists every tensor `f` reads that may need a gradient (a block's
/// weights): their gradients reach `.grad` through the outer backward as they
/// would without checkpointing, and the output requires grad when any of them
/// does, even if no input does. A parameter missing from the list gets no
/// gradient from `f`.
///
/// `f` must compute the same function both times: it sees the same autocast
/// state and, restored for the second call, the same CPU (and inputs' CUDA)
/// RNG state. With gradients off, or when nothing requires grad, `f` simply
/// runs once. A panic in `f` becomes an error, never an abort.
pub fn checkpoint<F>(inputs: &[&Tensor], params: &[&Tensor], f: F) -> Result<Tensor>
where
    F: Fn(&[Tensor]) -> Tensor + Send + 'static,
{
    let closure = Box::into_raw(Box::new(Closure(Mutex::new(f)))).cast::<c_void>();
    let handles = |tensors: &[&Tensor]| -> Vec<*const AtTensor> {
        tensors.iter().map(|t| t.as_ptr().cast()).collect()
    };
    let (inputs, params) = (handles(inputs), handles(params));
    let mut output: *mut AtTensor = ptr::null_mut();
    // SAFETY: the handle lists are live tensors borrowed for the call;
    // `closure` is a leaked Box<Closure<F>> that the shim now owns and frees
    // through drop_closure::<F>, the one function that reclaims it; on success
    // `output` receives a new heap-allocated tensor handle, which tch's Tensor
    // takes over.
    check(unsafe {
        clipflow_checkpoint(
            call_closure::<F>,
            drop_closure::<F>,
            closure,
            inputs.as_ptr(),
            inputs.len(),
            params.as_ptr(),
            params.len(),
            &mut output,
        )
    })
    .context("checkpointed forward")?;
    // SAFETY: see above; the shim set `output` because it returned no error.
    Ok(unsafe { Tensor::from_ptr(output.cast()) })
}

/// A training-mode block's `forward(block, x)` under [`checkpoint`], the
/// block (a copy sharing the weights `params`) owned by the recomputation.
/// The plain forward panics on the errors tch reports inside it, and so
/// does this.
pub fn checkpoint_block<B: Send + 'static>(
    x: &Tensor,
    params: &[&Tensor],
    block: B,
    forward: fn(&B, &Tensor) -> Tensor,
) -> Tensor {
    checkpoint(&[x], params, move |inputs| forward(&block, &inputs[0]))
        .unwrap_or_else(|error| panic!("{error:#}"))
}

/// The shim's callback: runs the closure at `closure` on the `count` tensors
/// at `inputs` and hands its result (or its panic message) to the shim.
extern "C" fn call_closure<F>(
    closure: *mut c_void,
    inputs: *const *const AtTensor,
    count: usize,
    output: *mut AtTensor,
    error: *mut CppString,
) -> bool
where
    F: Fn(&[Tensor]) -> Tensor + Send + 'static,
{
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `closure` is the Box<Closure<F>> checkpoint() leaked; the
        // shim frees it only after its last call.
        let closure = unsafe { &*closure.cast::<Closure<F>>() };
        let handles = if count == 0 {
            &[][..]
        } else {
            // SAFETY: the shim passes `count` live tensor handles.
            unsafe { std::slice::from_raw_parts(inputs, count) }
        };
        let inputs: Vec<Tensor> = handles
            .iter()
            // SAFETY: each handle is a live at::Tensor; clone_from_ptr makes
            // an owned handle sharing its storage.
            .map(|&handle| unsafe { Tensor::clone_from_ptr(handle.cast_mut().cast()) })
            .collect();
        // A poisoned lock only means an earlier call panicked; `Fn` keeps no
        // state that the panic could have left half-written.
        let f = closure.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&inputs)
    }));
    match result {
        Ok(tensor) => {
            // SAFETY: `output` is the shim's at::Tensor slot for this call;
            // the shim copies the handle before `tensor` drops.
            unsafe { clipflow_checkpoint_set_output(output, tensor.as_ptr().cast()) };
            true
        }
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            // SAFETY: `error` is the shim's string slot for this call; the
            // message is copied out of the borrowed bytes.
            unsafe { clipflow_checkpoint_set_error(error, message.as_ptr().cast(), message.len()) };
            false
        }
    }
}

/// The shim's destructor for the closure, called once its autograd node (or
/// the call, when nothing was recorded) is done with it.
extern "C" fn drop_closure<F>(closure: *mut c_void)
where
    F: Fn(&[Tensor]) -> Tensor + Send + 'static,
{
    // SAFETY: `closure` is the Box<Closure<F>> checkpoint() leaked, reclaimed
    // here exactly once. A panicking destructor must not unwind into C++.
    let dropped = catch_unwind(AssertUnwindSafe(|| unsafe {
        drop(Box::from_raw(closure.cast::<Closure<F>>()));
    }));
    if dropped.is_err() {
        eprintln!("clipflow: dropping a checkpointed closure panicked");
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message.to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "the checkpointed function panicked".to_string()
    }
}
