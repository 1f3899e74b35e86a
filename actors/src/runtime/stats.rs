//! Per-stage counters the workers update as they run (items in and out,
//! errors, restarts, time busy, time waiting for input and to send, queue
//! depth), their snapshots, and the end-of-run summary table.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

type QueueProbe = Box<dyn Fn() -> usize + Send + Sync>;

/// Live counters of one stage, shared by its workers and by whoever reports.
pub struct StageStats {
    name: String,
    parallelism: usize,
    capacity: Option<usize>,
    items_in: AtomicU64,
    items_out: AtomicU64,
    errors: AtomicU64,
    restarts: AtomicU64,
    busy_ns: AtomicU64,
    wait_input_ns: AtomicU64,
    wait_output_ns: AtomicU64,
    queue_depth_sum: AtomicU64,
    queue_samples: AtomicU64,
    /// Reads the current length of the stage's input queue while the graph
    /// runs; cleared at the end so the queue's memory is released.
    queue_probe: Mutex<Option<QueueProbe>>,
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl StageStats {
    pub(crate) fn new(name: &str, parallelism: usize, capacity: Option<usize>) -> Self {
        StageStats {
            name: name.to_string(),
            parallelism,
            capacity,
            items_in: AtomicU64::new(0),
            items_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            wait_input_ns: AtomicU64::new(0),
            wait_output_ns: AtomicU64::new(0),
            queue_depth_sum: AtomicU64::new(0),
            queue_samples: AtomicU64::new(0),
            queue_probe: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn set_queue_probe(&self, probe: Option<QueueProbe>) {
        *self.queue_probe.lock().unwrap_or_else(|e| e.into_inner()) = probe;
    }

    pub(crate) fn add_items_in(&self, n: u64) {
        self.items_in.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_items_out(&self, n: u64) {
        self.items_out.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add_busy(&self, d: Duration) {
        self.busy_ns.fetch_add(nanos(d), Ordering::Relaxed);
    }
    pub(crate) fn add_wait_input(&self, d: Duration) {
        self.wait_input_ns.fetch_add(nanos(d), Ordering::Relaxed);
    }
    pub(crate) fn add_wait_output(&self, d: Duration) {
        self.wait_output_ns.fetch_add(nanos(d), Ordering::Relaxed);
    }
    /// Records the input queue's length seen when an item was taken from it.
    pub(crate) fn sample_queue_depth(&self, depth: usize) {
        self.queue_depth_sum
            .fetch_add(depth as u64, Ordering::Relaxed);
        self.queue_samples.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as they are now.
    pub fn snapshot(&self) -> StageSnapshot {
        let samples = self.queue_samples.load(Ordering::Relaxed);
        let queue_len = self
            .queue_probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|probe| probe());
        StageSnapshot {
            name: self.name.clone(),
            parallelism: self.parallelism,
            capacity: self.capacity,
            items_in: self.items_in.load(Ordering::Relaxed),
            items_out: self.items_out.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed)),
            wait_input: Duration::from_nanos(self.wait_input_ns.load(Ordering::Relaxed)),
            wait_output: Duration::from_nanos(self.wait_output_ns.load(Ordering::Relaxed)),
            queue_len,
            mean_queue_len: (samples > 0)
                .then(|| self.queue_depth_sum.load(Ordering::Relaxed) as f64 / samples as f64),
        }
    }
}

/// One stage's counters at one moment. Times are summed over its workers.
#[derive(Clone, Debug, PartialEq)]
pub struct StageSnapshot {
    pub name: String,
    pub parallelism: usize,
    /// Capacity of the input queue; `None` for a source.
    pub capacity: Option<usize>,
    pub items_in: u64,
    pub items_out: u64,
    pub errors: u64,
    pub restarts: u64,
    pub busy: Duration,
    pub wait_input: Duration,
    pub wait_output: Duration,
    /// Items waiting in the input queue now (only while the graph runs).
    pub queue_len: Option<usize>,
    /// Mean input-queue length seen each time a worker took an item.
    pub mean_queue_len: Option<f64>,
}

impl StageSnapshot {
    /// Items handled: taken in by a stage, sent out by a source.
    pub fn items_handled(&self) -> u64 {
        if self.capacity.is_some() {
            self.items_in
        } else {
            self.items_out
        }
    }

    /// Share of the workers' time spent working, over `elapsed` wall time:
    /// near 1 for the bottleneck, low for a stage that mostly waits.
    pub fn busy_fraction(&self, elapsed: Duration) -> f64 {
        let available = elapsed.as_secs_f64() * self.parallelism as f64;
        if available > 0.0 {
            (self.busy.as_secs_f64() / available).min(1.0)
        } else {
            0.0
        }
    }
}

/// What a finished run did: wall time and the final counters of every stage.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub elapsed: Duration,
    pub stages: Vec<StageSnapshot>,
}

impl RunReport {
    pub fn stage(&self, name: &str) -> Option<&StageSnapshot> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The stage whose workers were busy the largest share of the run.
    pub fn bottleneck(&self) -> Option<&StageSnapshot> {
        self.stages.iter().max_by(|a, b| {
            a.busy_fraction(self.elapsed)
                .total_cmp(&b.busy_fraction(self.elapsed))
        })
    }
}

fn percent(part: Duration, elapsed: Duration, parallelism: usize) -> String {
    let available = elapsed.as_secs_f64() * parallelism as f64;
    if available > 0.0 {
        format!("{:.0}%", 100.0 * (part.as_secs_f64() / available).min(1.0))
    } else {
        "-".to_string()
    }
}

impl fmt::Display for RunReport {
    /// A table with one row per stage; the busiest stage is marked, since it
    /// is the one that limits throughput.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        let width = self
            .stages
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(5)
            .max(5);
        writeln!(
            f,
            "{:<width$}  {:>7}  {:>10}  {:>10}  {:>10}  {:>6}  {:>8}  {:>5}  {:>7}  {:>8}  {:>11}",
            "stage",
            "workers",
            "in",
            "out",
            "items/s",
            "errors",
            "restarts",
            "busy",
            "wait-in",
            "wait-out",
            "queue(mean)"
        )?;
        let bottleneck = self.bottleneck().map(|s| s.name.clone());
        for s in &self.stages {
            let rate = if seconds > 0.0 {
                s.items_handled() as f64 / seconds
            } else {
                0.0
            };
            let queue = match (s.mean_queue_len, s.capacity) {
                (Some(mean), Some(cap)) => format!("{mean:.1}/{cap}"),
                (None, Some(cap)) => format!("-/{cap}"),
                _ => "-".to_string(),
            };
            let mark = if bottleneck.as_deref() == Some(&s.name) {
                "  <- bottleneck"
            } else {
                ""
            };
            writeln!(
                f,
                "{:<width$}  {:>7}  {:>10}  {:>10}  {:>10.1}  {:>6}  {:>8}  {:>5}  {:>7}  {:>8}  {:>11}{mark}",
                s.name,
                s.parallelism,
                s.items_in,
                s.items_out,
                rate,
                s.errors,
                s.restarts,
                percent(s.busy, self.elapsed, s.parallelism),
                percent(s.wait_input, self.elapsed, s.parallelism),
                percent(s.wait_output, self.elapsed, s.parallelism),
                queue,
            )?;
        }
        write!(f, "elapsed {seconds:.3}s")
    }
}
