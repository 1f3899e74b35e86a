//! Collective operations between the ranks of a data-parallel group: the
//! `Collective` trait that losses (feature all-gathers) and, later, the step
//! executor (gradient all-reduce) use, with two implementations that need no
//! network: `SingleProcess` (world size 1) and `thread_group` (N ranks as
//! threads of one process, exchanging tensors through shared slots and a
//! barrier). The multi-process one, over libtorch's c10d, is
//! [`crate::distributed::ProcessGroup`].
//!
//! Every rank of a group must make the same calls in the same order with
//! tensors of the same shape, as with `torch.distributed`.

use std::sync::{Arc, Barrier, Mutex};

use anyhow::{bail, Result};
use tch::Tensor;

/// One rank's handle on its group.
pub trait Collective: Send + Sync {
    /// Number of ranks in the group.
    fn world_size(&self) -> usize;

    /// This rank's index in `0..world_size()`.
    fn rank(&self) -> usize;

    /// Every rank's `tensor`, in rank order, as new tensors outside autograd
    /// (`torch.distributed.all_gather`).
    fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>>;

    /// The element-wise sum over ranks of `tensor`, outside autograd, on
    /// every rank (`all_reduce` with `ReduceOp.SUM`).
    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor>;

    /// Rank k receives the sum over ranks of their `chunks[k]`
    /// (`reduce_scatter` with `ReduceOp.SUM`). The default goes through
    /// `all_reduce_sum`; backends with a native reduce-scatter override it.
    fn reduce_scatter_sum(&self, chunks: &[Tensor]) -> Result<Tensor> {
        if chunks.len() != self.world_size() {
            bail!(
                "reduce-scatter needs one chunk per rank: got {} chunks for world size {}",
                chunks.len(),
                self.world_size()
            );
        }
        let summed = self.all_reduce_sum(&Tensor::stack(chunks, 0))?;
        Ok(summed.get(self.rank() as i64))
    }
}

/// The group of one process: world size 1, rank 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn world_size(&self) -> usize {
        1
    }

    fn rank(&self) -> usize {
        0
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>> {
        Ok(vec![tensor.detach().copy()])
    }

    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.detach().copy())
    }
}

/// What the ranks of a `thread_group` share: one slot per rank for the tensor
/// it contributes to the current collective, and a barrier between phases.
struct Exchange {
    slots: Mutex<Vec<Option<Tensor>>>,
    barrier: Barrier,
}

/// A group of `world_size` ranks as threads of one process: one
/// `ThreadRank` per rank, in rank order; move each into its own thread. If
/// one rank stops calling collectives (it failed), the others wait forever,
/// as `torch.distributed` ranks do without a timeout.
pub fn thread_group(world_size: usize) -> Result<Vec<ThreadRank>> {
    if world_size == 0 {
        bail!("a thread group needs at least one rank");
    }
    let exchange = Arc::new(Exchange {
        slots: Mutex::new((0..world_size).map(|_| None).collect()),
        barrier: Barrier::new(world_size),
    });
    Ok((0..world_size)
        .map(|rank| ThreadRank {
            rank,
            world_size,
            exchange: Arc::clone(&exchange),
        })
        .collect())
}

/// One rank of a `thread_group`.
pub struct ThreadRank {
    rank: usize,
    world_size: usize,
    exchange: Arc<Exchange>,
}

impl ThreadRank {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Option<Tensor>>> {
        // A rank that panicked while holding the lock leaves the slots
        // consistent (each write is one assignment), so go on past poison.
        self.exchange
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Collective for ThreadRank {
    fn world_size(&self) -> usize {
        self.world_size
    }

    fn rank(&self) -> usize {
        self.rank
    }

    fn all_gather(&self, tensor: &Tensor) -> Result<Vec<Tensor>> {
        self.slots()[self.rank] = Some(tensor.detach().copy());
        self.exchange.barrier.wait();
        let gathered: Vec<Tensor> = self
            .slots()
            .iter()
            .map(|slot| slot.as_ref().expect("every rank filled its slot").copy())
            .collect();
        self.exchange.barrier.wait();
        self.slots()[self.rank] = None;
        // Every rank sees the same shapes, so every rank fails alike.
        if let Some((other, t)) = gathered
            .iter()
            .enumerate()
            .find(|(_, t)| t.size() != gathered[0].size())
        {
            bail!(
                "all-gather needs the same shape on every rank: rank 0 sent {:?}, rank {other} sent {:?}",
                gathered[0].size(),
                t.size()
            );
        }
        Ok(gathered)
    }

    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        let gathered = self.all_gather(tensor)?;
        // Summed in rank order on every rank, so all ranks get the same bits.
        let mut sum = gathered[0].shallow_clone();
        for t in &gathered[1..] {
            sum += t;
        }
        Ok(sum)
    }
}
