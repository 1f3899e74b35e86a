//! The traits a pipeline component implements ([`Source`], [`Stage`]) and the
//! [`Emitter`] through which it sends items downstream.
//!
//! A component is plain synchronous Rust: the runtime calls it on its own OS
//! thread, one instance per worker, and handles channels, backpressure,
//! end-of-stream and shutdown around it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender, TrySendError};

use super::stats::StageStats;

/// Which worker of a component an instance is, so that parallel instances of a
/// source can split the work between them (worker `index` of `count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    pub index: usize,
    pub count: usize,
}

/// A component with no input: it produces items (reads shards, counts...).
pub trait Source: Send + 'static {
    type Out: Send + 'static;

    /// Produces every item of this worker through `out`, then returns.
    /// Propagate `emit`'s error with `?`: it means the graph is stopping.
    fn run(&mut self, out: &mut Emitter<Self::Out>) -> anyhow::Result<()>;
}

/// A component that turns each input item into zero or more output items.
/// A stage whose `Out` is `()` is a sink: it consumes and emits nothing.
pub trait Stage: Send + 'static {
    type In: Send + 'static;
    type Out: Send + 'static;

    /// Handles one item. An error fails this worker: the runtime restarts it
    /// when the stage was declared restartable, or stops the graph.
    fn process(&mut self, item: Self::In, out: &mut Emitter<Self::Out>) -> anyhow::Result<()>;

    /// Called once per worker after its input has ended (every producer
    /// finished and the queue is drained), to flush what it holds. Not called
    /// when the graph stops on a failure, so a stage that writes files should
    /// make them visible here (write, then rename) and nowhere else.
    fn finish(&mut self, out: &mut Emitter<Self::Out>) -> anyhow::Result<()> {
        let _ = out;
        Ok(())
    }
}

/// The error `Emitter::emit` returns when the graph is stopping (a stage
/// failed, or every consumer is gone): the component should return it.
#[derive(Debug, thiserror::Error)]
#[error("the graph is stopping")]
pub struct Stopped;

/// Sends a component's items to the next stage's bounded queue, blocking while
/// that queue is full (this is the backpressure), and counts them.
pub struct Emitter<T> {
    output: Option<Sender<T>>,
    shutdown: Receiver<()>,
    stats: Arc<StageStats>,
    time_waiting: Duration,
}

impl<T> Emitter<T> {
    pub(crate) fn new(
        output: Option<Sender<T>>,
        shutdown: Receiver<()>,
        stats: Arc<StageStats>,
    ) -> Self {
        Emitter {
            output,
            shutdown,
            stats,
            time_waiting: Duration::ZERO,
        }
    }

    /// Sends `item` downstream, waiting for room in the queue.
    pub fn emit(&mut self, item: T) -> Result<(), Stopped> {
        if let Some(output) = &self.output {
            match output.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Disconnected(_)) => return Err(Stopped),
                Err(TrySendError::Full(item)) => {
                    let started = Instant::now();
                    let sent = select! {
                        send(output, item) -> sent => sent.is_ok(),
                        recv(self.shutdown) -> _ => false,
                    };
                    let waited = started.elapsed();
                    self.time_waiting += waited;
                    self.stats.add_wait_output(waited);
                    if !sent {
                        return Err(Stopped);
                    }
                }
            }
        }
        self.stats.add_items_out(1);
        Ok(())
    }

    /// True once the graph is stopping: a long-running source that emits
    /// rarely can poll this to return early.
    pub fn is_stopping(&self) -> bool {
        matches!(
            self.shutdown.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Total time this emitter has spent blocked on a full queue, so the
    /// worker can tell busy time from time waiting to send.
    pub(crate) fn time_waiting(&self) -> Duration {
        self.time_waiting
    }
}
