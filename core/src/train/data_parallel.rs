//! What `DistributedDataParallel` does around each training step of one
//! rank, for the [`Trainer`](super::trainer::Trainer): rank 0's weights and
//! buffers broadcast once at start-up, rank 0's buffers (batch-norm
//! statistics) broadcast before a forward pass as DDP's
//! `broadcast_buffers=True` does, the gradient reducer armed around each
//! forward pass that will run backward, and one agreement per backward on
//! whether every rank's loss was finite (a step is skipped on all ranks or
//! on none, so no rank waits in a reduction the others never start).

use std::sync::Arc;

use anyhow::Result;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::collective::Collective;
use crate::distributed::{GradientReducer, ProcessGroup};

/// One rank's share of data-parallel training.
pub struct DataParallel {
    group: Arc<ProcessGroup>,
    reducer: GradientReducer,
    /// Variables that are not parameters (DDP's module buffers).
    buffers: Vec<Tensor>,
    /// DDP's `require_forward_param_sync`: the last forward pass ran with
    /// gradients (or none ran yet), so the next one syncs buffers first.
    sync_buffers_next: bool,
}

impl DataParallel {
    /// Wraps the model whose variables live in `vs`, as
    /// `DistributedDataParallel(model)` does: every variable takes rank 0's
    /// value, and the parameters that require gradients get a reducer.
    pub fn new(group: Arc<ProcessGroup>, vs: &VarStore, static_graph: bool) -> Result<Self> {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let all: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
        tch::no_grad(|| group.broadcast(&all, 0))?;
        let trainable: Vec<i64> = vs
            .trainable_variables()
            .iter()
            .map(|t| t.data_ptr() as i64)
            .collect();
        let (params, buffers): (Vec<Tensor>, Vec<Tensor>) = named
            .into_iter()
            .map(|(_, t)| t)
            .partition(|t| trainable.contains(&(t.data_ptr() as i64)));
        let params: Vec<Tensor> = params.into_iter().filter(Tensor::requires_grad).collect();
        let reducer = GradientReducer::new(&group, params, static_graph)?;
        Ok(DataParallel {
            group,
            reducer,
            buffers,
            sync_buffers_next: true,
        })
    }

    pub fn group(&self) -> &Arc<ProcessGroup> {
        &self.group
    }

    /// Before a forward pass of the model; `with_grad` when its backward
    /// will run.
    pub fn before_forward(&mut self, with_grad: bool) -> Result<()> {
        if with_grad {
            self.reducer.prepare_for_forward()?;
        }
        if self.sync_buffers_next && !self.buffers.is_empty() {
            tch::no_grad(|| self.group.broadcast(&self.buffers, 0))?;
        }
        Ok(())
    }

    /// After that forward pass.
    pub fn after_forward(&mut self, with_grad: bool) -> Result<()> {
        self.sync_buffers_next = with_grad;
        if with_grad {
            self.reducer.prepare_for_backward()?;
        }
        Ok(())
    }

    /// Whether every rank's loss was finite, given this rank's.
    pub fn all_finite(&self, finite: bool) -> Result<bool> {
        let not_finite = Tensor::from_slice(&[if finite { 0f32 } else { 1.0 }]);
        let count = self.group.all_reduce_sum(&not_finite)?;
        Ok(count.to_kind(Kind::Float).double_value(&[0]) == 0.0)
    }
}
