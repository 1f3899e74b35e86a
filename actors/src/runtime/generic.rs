//! Small generic components for trying the runtime and testing it apart
//! from the real actors: a counting source, a pass-through stage that
//! simulates work (and can fail on chosen items), and a sink that drops what
//! it gets. Topology files reach them as the kinds `counter`, `work` and
//! `null` (`topologies/demo.toml`).

use std::time::{Duration, Instant};

use super::stage::{Emitter, Source, Stage, WorkerInfo};

/// Emits the numbers `0..count`, split between its workers (worker `i` of
/// `n` emits `i, i + n, i + 2n, ...`).
pub struct Counter {
    next: u64,
    step: u64,
    end: u64,
}

impl Counter {
    pub fn new(count: u64, worker: WorkerInfo) -> Self {
        Counter {
            next: worker.index as u64,
            step: worker.count as u64,
            end: count,
        }
    }
}

impl Source for Counter {
    type Out = u64;

    fn run(&mut self, out: &mut Emitter<u64>) -> anyhow::Result<()> {
        while self.next < self.end {
            out.emit(self.next)?;
            self.next += self.step;
        }
        Ok(())
    }
}

/// Passes each number through after spinning the CPU for `work` and sleeping
/// for `sleep`; fails on the numbers listed in `fail_on`. Keeps no state, so
/// it can be restarted.
#[derive(Clone, Debug, Default)]
pub struct Work {
    pub work: Duration,
    pub sleep: Duration,
    pub fail_on: Vec<u64>,
}

impl Stage for Work {
    type In = u64;
    type Out = u64;

    fn process(&mut self, item: u64, out: &mut Emitter<u64>) -> anyhow::Result<()> {
        if self.fail_on.contains(&item) {
            anyhow::bail!("item {item} is in fail_on");
        }
        spin_for(self.work);
        if !self.sleep.is_zero() {
            std::thread::sleep(self.sleep);
        }
        out.emit(item)?;
        Ok(())
    }
}

/// Drops every number it receives, optionally sleeping for each.
#[derive(Clone, Debug, Default)]
pub struct Null {
    pub sleep: Duration,
}

impl Stage for Null {
    type In = u64;
    type Out = ();

    fn process(&mut self, _item: u64, _out: &mut Emitter<()>) -> anyhow::Result<()> {
        if !self.sleep.is_zero() {
            std::thread::sleep(self.sleep);
        }
        Ok(())
    }
}

/// Keeps the CPU busy (like a decoder would) rather than sleeping.
fn spin_for(duration: Duration) {
    let started = Instant::now();
    while started.elapsed() < duration {
        std::hint::spin_loop();
    }
}
