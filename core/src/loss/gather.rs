//! Feature all-gathers inside one loss evaluation, with OpenCLIP's two
//! gradient behaviours.
//!
//! Without grad (`dist.all_gather`), every gathered slice is a constant.
//! With grad (`torch.distributed.nn.all_gather`), the gradient that rank j's
//! loss sends into slice k is summed over j and lands on rank k's features
//! (the all-gather's backward is a reduce-scatter). tch has no custom
//! autograd functions, so that exchange happens when the loss is built:
//! slices from other ranks are leaves; `GatherScope::settle` takes the
//! loss's gradient with respect to them, reduce-scatters it to the owners,
//! and adds to the loss a term worth exactly zero whose gradient with
//! respect to the local features is what the other ranks sent. A later
//! `loss.backward()` then gives the local features the sum torch's
//! all-gather backward gives. This holds when every rank scales its loss by
//! the same factor before backward (a gradient scaler, loss weights), which
//! OpenCLIP's training always does.

use anyhow::{Context, Result};
use tch::{Kind, Tensor};

use crate::collective::Collective;

/// A local tensor gathered with grad, and the leaves standing in for the
/// other ranks' slices (`None` at this rank's own index).
struct GatheredWithGrad {
    local: Tensor,
    others: Vec<Option<Tensor>>,
}

/// The all-gathers of one loss evaluation.
pub(crate) struct GatherScope<'a> {
    collective: &'a dyn Collective,
    with_grad: Vec<GatheredWithGrad>,
}

impl<'a> GatherScope<'a> {
    pub(crate) fn new(collective: &'a dyn Collective) -> Self {
        GatherScope {
            collective,
            with_grad: Vec::new(),
        }
    }

    /// Every rank's `local`, in rank order, all constants.
    pub(crate) fn without_grad(&self, local: &Tensor) -> Result<Vec<Tensor>> {
        self.collective.all_gather(local)
    }

    /// Every rank's `local`, in rank order; this rank's slot is `local`
    /// itself, and gradients reaching the other slots go back to their
    /// ranks in `settle`.
    pub(crate) fn with_grad(&mut self, local: &Tensor) -> Result<Vec<Tensor>> {
        let rank = self.collective.rank();
        let gathered = self.collective.all_gather(local)?;
        if !local.requires_grad() {
            return Ok(gathered);
        }
        let mut slices = Vec::with_capacity(gathered.len());
        let mut others = Vec::with_capacity(gathered.len());
        for (k, slice) in gathered.into_iter().enumerate() {
            if k == rank {
                slices.push(local.shallow_clone());
                others.push(None);
            } else {
                let leaf = slice.set_requires_grad(true);
                slices.push(leaf.shallow_clone());
                others.push(Some(leaf));
            }
        }
        self.with_grad.push(GatheredWithGrad {
            local: local.shallow_clone(),
            others,
        });
        Ok(slices)
    }

    /// `loss` plus a zero-valued term carrying the gradients the other ranks'
    /// losses send to this rank's gathered-with-grad tensors. Every rank
    /// calls this (or [`carried`](Self::carried)) once per evaluation, after
    /// building its loss.
    pub(crate) fn settle(self, loss: Tensor) -> Result<Tensor> {
        let carried = self.carried(&loss)?;
        Ok(match carried {
            Some(zero) => loss + zero,
            None => loss,
        })
    }

    /// The zero-valued term [`settle`](Self::settle) adds, for a loss
    /// reported as several terms: add it to one of them, with `total` the
    /// sum of all (so each term's exchanged gradient reaches its owner).
    /// `None` when nothing was gathered with grad.
    pub(crate) fn carried(self, total: &Tensor) -> Result<Option<Tensor>> {
        let leaves: Vec<&Tensor> = self
            .with_grad
            .iter()
            .flat_map(|g| g.others.iter().flatten())
            .collect();
        if leaves.is_empty() {
            return Ok(None);
        }
        let mut grads = Tensor::f_run_backward(&[total], &leaves, true, false)
            .context("gradient of the loss with respect to the gathered features")?
            .into_iter();
        let mut carried: Option<Tensor> = None;
        for gathered in &self.with_grad {
            let chunks: Vec<Tensor> = gathered
                .others
                .iter()
                .map(|other| match other {
                    Some(_) => grads.next().expect("one gradient per leaf"),
                    None => gathered.local.detach().zeros_like(),
                })
                .collect();
            let incoming = self.collective.reduce_scatter_sum(&chunks)?;
            let local = gathered.local.to_kind(Kind::Float);
            let term = (local * incoming.to_kind(Kind::Float)).sum(Kind::Float);
            let zero = &term - term.detach();
            carried = Some(match carried {
                Some(sum) => sum + zero,
                None => zero,
            });
        }
        Ok(carried)
    }
}
