//! Training across processes through libtorch's c10d, as
//! `torch.distributed` and `DistributedDataParallel` do it (the C++ side is
//! core/shim/distributed.cpp):
//!
//! - [`ProcessGroup`]: one rank's membership of a group that met at a
//!   TCPStore (`init_process_group("env://")`): gloo for CPU tensors and,
//!   with [`Backend::Nccl`], NCCL for CUDA tensors. It is a [`Collective`],
//!   so the losses' feature exchanges run over it.
//! - [`ProcessGroup::all_reduce_sum_with_grad`]: a sum over the ranks that
//!   autograd differentiates (`torch.distributed.nn.functional.all_reduce`),
//!   which synchronised batch norm gathers its statistics with.
//! - [`GradientReducer`]: DDP's own Reducer, which all-reduces and averages
//!   gradients in buckets while the backward pass still runs.
//!
//! Every rank must make the same calls in the same order with tensors of
//! the same shapes. A collective that waits longer than the group's timeout
//! fails with an error instead of hanging.

use std::ffi::{c_char, CString};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tch::Tensor;

use crate::collective::Collective;
use crate::shim::{check, AtTensor};

/// DDP's default bucket size (`bucket_cap_mb=25`).
pub const DDP_BUCKET_BYTES: i64 = 25 * 1024 * 1024;
/// DDP's first, smaller bucket (`dist._DEFAULT_FIRST_BUCKET_BYTES`).
pub const DDP_FIRST_BUCKET_BYTES: i64 = 1024 * 1024;
/// The buffer DDP packs module states into for its broadcasts (250 MiB).
const BROADCAST_BUFFER_BYTES: usize = 250 * 1024 * 1024;

#[repr(C)]
struct RawProcessGroup {
    _private: [u8; 0],
}

#[repr(C)]
struct RawReducer {
    _private: [u8; 0],
}

extern "C" {
    fn clipflow_process_group_new(
        host: *const c_char,
        port: u16,
        store_is_hosted: bool,
        rank: i32,
        world_size: i32,
        timeout_ms: i64,
        nccl: bool,
        out: *mut *mut RawProcessGroup,
    ) -> *mut c_char;
    fn clipflow_process_group_free(group: *mut RawProcessGroup);
    fn clipflow_all_reduce_sum(group: *mut RawProcessGroup, tensor: *const AtTensor)
        -> *mut c_char;
    fn clipflow_all_reduce_sum_with_grad(
        group: *mut RawProcessGroup,
        input: *const AtTensor,
        output: *mut *mut AtTensor,
    ) -> *mut c_char;
    fn clipflow_all_gather(
        group: *mut RawProcessGroup,
        input: *const AtTensor,
        outputs: *const *const AtTensor,
        count: usize,
    ) -> *mut c_char;
    fn clipflow_broadcast_coalesced(
        group: *mut RawProcessGroup,
        tensors: *const *const AtTensor,
        count: usize,
        buffer_bytes: usize,
        root: i32,
    ) -> *mut c_char;
    fn clipflow_barrier(group: *mut RawProcessGroup) -> *mut c_char;
    fn clipflow_barrier_unbounded(group: *mut RawProcessGroup) -> *mut c_char;
    fn clipflow_reducer_new(
        group: *mut RawProcessGroup,
        params: *const *const AtTensor,
        count: usize,
        bucket_bytes: i64,
        first_bucket_bytes: i64,
        static_graph: bool,
        out: *mut *mut RawReducer,
    ) -> *mut c_char;
    fn clipflow_reducer_free(reducer: *mut RawReducer);
    fn clipflow_reducer_prepare_for_forward(reducer: *mut RawReducer) -> *mut c_char;
    fn clipflow_reducer_prepare_for_backward(reducer: *mut RawReducer) -> *mut c_char;
}

/// What carries the collectives of CUDA tensors (CPU tensors always go
/// through gloo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `--dist-backend gloo`: CPU devices only.
    Gloo,
    /// `--dist-backend nccl`: CUDA devices.
    Nccl,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Gloo => "gloo",
            Backend::Nccl => "nccl",
        }
    }
}

/// Where and how the ranks of a group meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// The TCPStore's host (`MASTER_ADDR`, or the host of `tcp://`).
    pub host: String,
    pub port: u16,
    /// A launcher's agent already hosts the store (torchrun's
    /// `TORCHELASTIC_USE_AGENT_STORE`): every rank connects as a client.
    /// Otherwise rank 0 hosts it.
    pub store_is_hosted: bool,
    pub rank: usize,
    pub world_size: usize,
    /// How long the rendezvous and each collective may wait.
    pub timeout: Duration,
    pub backend: Backend,
}

/// One rank's handle on a c10d process group over gloo.
pub struct ProcessGroup {
    raw: *mut RawProcessGroup,
    rank: usize,
    world_size: usize,
}

// SAFETY: c10d process groups are made to be driven from any thread; the
// handle is only freed on drop.
impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish_non_exhaustive()
    }
}

unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

fn handles(tensors: &[Tensor]) -> Vec<*const AtTensor> {
    tensors.iter().map(|t| t.as_ptr().cast()).collect()
}

impl ProcessGroup {
    /// Joins the group: connects to (or, as rank 0, hosts) the store, then
    /// waits for every rank.
    pub fn join(rendezvous: &Rendezvous) -> Result<Self> {
        let Rendezvous {
            host,
            port,
            rank,
            world_size,
            ..
        } = rendezvous;
        if *world_size == 0 || rank >= world_size {
            bail!("rank {rank} is not below the world size {world_size}");
        }
        let host_c = CString::new(host.as_str())
            .with_context(|| format!("the rendezvous host {host:?} holds a NUL byte"))?;
        let timeout_ms = i64::try_from(rendezvous.timeout.as_millis()).unwrap_or(i64::MAX);
        let mut raw = std::ptr::null_mut();
        // SAFETY: the host string outlives the call, which writes the new
        // handle to `raw` on success.
        check(unsafe {
            clipflow_process_group_new(
                host_c.as_ptr(),
                *port,
                rendezvous.store_is_hosted,
                *rank as i32,
                *world_size as i32,
                timeout_ms,
                rendezvous.backend == Backend::Nccl,
                &mut raw,
            )
        })
        .with_context(|| {
            format!(
                "rank {rank} of {world_size} joining the group at {host}:{port} ({}, timeout {}s)",
                rendezvous.backend.name(),
                rendezvous.timeout.as_secs()
            )
        })?;
        Ok(ProcessGroup {
            raw,
            rank: *rank,
            world_size: *world_size,
        })
    }

    /// Rank `root`'s values of `tensors`, copied into them in place on
    /// every rank (DDP's start-up broadcast of weights and buffers).
    pub fn broadcast(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        if tensors.is_empty() {
            return Ok(());
        }
        let tensors = handles(tensors);
        // SAFETY: the handles are live for the call.
        check(unsafe {
            clipflow_broadcast_coalesced(
                self.raw,
                tensors.as_ptr(),
                tensors.len(),
                BROADCAST_BUFFER_BYTES,
                root as i32,
            )
        })
        .with_context(|| format!("broadcast from rank 0 across {} ranks", self.world_size))
    }

    /// The sum over ranks of `tensor`, inside autograd: the backward pass
    /// sums the gradient reaching the result over the ranks and hands it to
    /// `tensor` (`torch.distributed.nn.functional.all_reduce`). Every rank's
    /// backward must reach it, as every rank's forward did.
    pub fn all_reduce_sum_with_grad(&self, tensor: &Tensor) -> Result<Tensor> {
        let mut output: *mut AtTensor = std::ptr::null_mut();
        // SAFETY: `tensor` is live for the call, which on success writes a
        // new heap-allocated tensor handle, owned by tch's Tensor from here.
        check(unsafe {
            clipflow_all_reduce_sum_with_grad(self.raw, tensor.as_ptr().cast(), &mut output)
        })
        .with_context(|| {
            format!(
                "all-reduce with grad of a {:?} tensor across {} ranks",
                tensor.size(),
                self.world_size
            )
        })?;
        // SAFETY: see above.
        Ok(unsafe { Tensor::from_ptr(output.cast()) })
    }

    /// Waits until every rank got here.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: no tensors; the group is live.
        check(unsafe { clipflow_barrier(self.raw) })
            .with_context(|| format!("barrier across {} ranks", self.world_size))
    }
}

impl ProcessGroup {
    /// Waits until every rank got here, however long that takes (rank 0
    /// evaluating while the others wait); a rank that died still fails it
    /// at once.
    pub fn barrier_unbounded(&self) -> Result<()> {
        // SAFETY: no tensors; the group is live.
        check(unsafe { clipflow_barrier_unbounded(self.raw) })
            .with_context(|| format!("waiting for every rank across {} ranks", self.world_size))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by clipflow_process_group_new, freed once.
        unsafe { clipflow_process_group_free(self.raw) }
    }
}

impl Collective for ProcessGroup {
    fn world_size(&self) -> usize {
        self.world_size
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>> {
        let input = tensor.detach().contiguous();
        let outputs: Vec<Tensor> = (0..self.world_size).map(|_| input.empty_like()).collect();
        let output_handles = handles(&outputs);
        // SAFETY: input and outputs are live, contiguous and of one shape.
        check(unsafe {
            clipflow_all_gather(
                self.raw,
                input.as_ptr().cast(),
                output_handles.as_ptr(),
                output_handles.len(),
            )
        })
        .with_context(|| {
            format!(
                "all-gather of a {:?} tensor across {} ranks",
                tensor.size(),
                self.world_size
            )
        })?;
        Ok(outputs)
    }

    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        let summed = tensor.detach().contiguous().copy();
        // SAFETY: `summed` is a live tensor of its own.
        check(unsafe { clipflow_all_reduce_sum(self.raw, summed.as_ptr().cast()) }).with_context(
            || {
                format!(
                    "all-reduce of a {:?} tensor across {} ranks",
                    tensor.size(),
                    self.world_size
                )
            },
        )?;
        Ok(summed)
    }
}

/// DistributedDataParallel's Reducer over a model's trainable parameters:
/// after [`prepare_for_forward`](Self::prepare_for_forward) and
/// [`prepare_for_backward`](Self::prepare_for_backward) around a forward
/// pass, the backward pass leaves every parameter's `.grad` averaged over
/// the ranks, reduced bucket by bucket as the gradients become ready.
pub struct GradientReducer {
    raw: *mut RawReducer,
    world_size: usize,
    /// The reducer holds the parameters and the group; so does this.
    _params: Vec<Tensor>,
}

// SAFETY: the Reducer is driven from the thread that runs the steps; its
// autograd hooks run on libtorch's own threads, as in DDP.
unsafe impl Send for GradientReducer {}

impl GradientReducer {
    /// DDP's bucketing (`bucket_cap_mb=25`, a 1 MiB first bucket), with
    /// `static_graph` as `--ddp-static-graph`.
    pub fn new(group: &ProcessGroup, params: Vec<Tensor>, static_graph: bool) -> Result<Self> {
        let handles = handles(&params);
        let mut raw = std::ptr::null_mut();
        // SAFETY: the parameter handles are live for the call (the reducer
        // keeps its own references), and the group outlives nothing here:
        // the reducer holds a reference to it.
        check(unsafe {
            clipflow_reducer_new(
                group.raw,
                handles.as_ptr(),
                handles.len(),
                DDP_BUCKET_BYTES,
                DDP_FIRST_BUCKET_BYTES,
                static_graph,
                &mut raw,
            )
        })
        .context("setting up the gradient reducer")?;
        Ok(GradientReducer {
            raw,
            world_size: group.world_size,
            _params: params,
        })
    }

    /// Before a forward pass whose backward will run.
    pub fn prepare_for_forward(&mut self) -> Result<()> {
        // SAFETY: the reducer is live.
        check(unsafe { clipflow_reducer_prepare_for_forward(self.raw) }).with_context(|| {
            format!(
                "the gradient reducer across {} ranks, before the forward pass",
                self.world_size
            )
        })
    }

    /// After that forward pass: its backward reduces the gradients.
    pub fn prepare_for_backward(&mut self) -> Result<()> {
        // SAFETY: the reducer is live.
        check(unsafe { clipflow_reducer_prepare_for_backward(self.raw) }).with_context(|| {
            format!(
                "the gradient reducer across {} ranks, after the forward pass",
                self.world_size
            )
        })
    }
}

impl Drop for GradientReducer {
    fn drop(&mut self) {
        // SAFETY: created by clipflow_reducer_new, freed once.
        unsafe { clipflow_reducer_free(self.raw) }
    }
}
