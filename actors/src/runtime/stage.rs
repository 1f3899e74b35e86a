//! The traits a pipeline component implements ([`Source`], [`Stage`]) and the
//! [`Emitter`] through which it sends items downstream.
//!
//! A component is plain synchronous Rust: the runtime calls it on its own OS
//! thread, one instance per worker, and handles channels, backpressure,
//! end-of-stream and shutdown around it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender, TrySendError};

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

/// Where a component's items go.
pub(crate) enum Outputs<T> {
    /// Nowhere: the component is a sink.
    None,
    /// The queue of the one stage that reads them.
    One(Sender<T>),
    /// The queues of several stages, each of which gets every item (a
    /// fan-out): copies made with `copy`, the item itself to the last.
    FanOut {
        senders: Vec<Sender<T>>,
        copy: fn(&T) -> T,
    },
}

impl<T> Clone for Outputs<T> {
    fn clone(&self) -> Self {
        match self {
            Outputs::None => Outputs::None,
            Outputs::One(sender) => Outputs::One(sender.clone()),
            Outputs::FanOut { senders, copy } => Outputs::FanOut {
                senders: senders.clone(),
                copy: *copy,
            },
        }
    }
}

/// Sends a component's items to the next stages' bounded queues, blocking
/// while a queue is full (this is the backpressure), and counts them.
pub struct Emitter<T> {
    output: Outputs<T>,
    shutdown: Receiver<()>,
    stats: Arc<StageStats>,
    time_waiting: Duration,
}

impl<T> Emitter<T> {
    pub(crate) fn new(output: Outputs<T>, shutdown: Receiver<()>, stats: Arc<StageStats>) -> Self {
        Emitter {
            output,
            shutdown,
            stats,
            time_waiting: Duration::ZERO,
        }
    }

    /// Sends `item` downstream (a copy to each stage of a fan-out), waiting
    /// for room in each queue in turn.
    pub fn emit(&mut self, item: T) -> Result<(), Stopped> {
        let waited = match &self.output {
            Outputs::None => Duration::ZERO,
            Outputs::One(sender) => send(sender, item, &self.shutdown)?,
            Outputs::FanOut { senders, copy } => {
                let mut waited = Duration::ZERO;
                if let Some((last, others)) = senders.split_last() {
                    for sender in others {
                        waited += send(sender, copy(&item), &self.shutdown)?;
                    }
                    waited += send(last, item, &self.shutdown)?;
                }
                waited
            }
        };
        if !waited.is_zero() {
            self.time_waiting += waited;
            self.stats.add_wait_output(waited);
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

/// Sends `item` to one queue, waiting while it is full unless the graph
/// stops; returns how long it waited.
fn send<T>(output: &Sender<T>, item: T, shutdown: &Receiver<()>) -> Result<Duration, Stopped> {
    match output.try_send(item) {
        Ok(()) => Ok(Duration::ZERO),
        Err(TrySendError::Disconnected(_)) => Err(Stopped),
        Err(TrySendError::Full(item)) => {
            let started = Instant::now();
            let sent = select! {
                send(output, item) -> sent => sent.is_ok(),
                recv(shutdown) -> _ => false,
            };
            if sent {
                Ok(started.elapsed())
            } else {
                Err(Stopped)
            }
        }
    }
}

/// The reading end of a side queue: items a stage takes when it chooses,
/// apart from its input (the evaluator's validation batches, taken when an
/// evaluation is due). The queue is bounded like any other, so its
/// producer runs at most its capacity ahead.
pub struct SideInput<T> {
    receiver: Receiver<T>,
}

impl<T> Clone for SideInput<T> {
    fn clone(&self) -> Self {
        SideInput {
            receiver: self.receiver.clone(),
        }
    }
}

/// How often a stage waiting on its side input looks whether the graph is
/// stopping.
const SIDE_INPUT_POLL: Duration = Duration::from_millis(50);

impl<T> SideInput<T> {
    pub(crate) fn new(receiver: Receiver<T>) -> Self {
        SideInput { receiver }
    }

    /// The next item, waiting for it; `None` once its producer has
    /// finished and the queue is drained, or when the graph is stopping
    /// (as `out` tells).
    pub fn next<O>(&self, out: &Emitter<O>) -> Option<T> {
        loop {
            match self.receiver.recv_timeout(SIDE_INPUT_POLL) {
                Ok(item) => return Some(item),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) if out.is_stopping() => return None,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}
