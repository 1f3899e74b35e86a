//! Worker threads: the loop that feeds a [`Stage`] from its input queue or
//! runs a [`Source`], timing and counting as it goes, and the type-erased
//! [`WorkerSpawner`] through which a stage's supervisor starts (and restarts)
//! its workers without knowing the item types.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{select, Receiver, TryRecvError};

use super::stage::{Emitter, Outputs, Source, Stage, Stopped, WorkerInfo};
use super::stats::StageStats;

/// How a worker thread ended.
#[derive(Debug)]
pub(crate) enum WorkerOutcome {
    /// Its input ended (or, for a source, it produced everything).
    Finished,
    /// The graph was stopping.
    Stopped,
    /// Its component returned an error or panicked.
    Failed(anyhow::Error),
}

/// Builds one instance of a component for a worker.
pub(crate) type MakeComponent<C> = Arc<dyn Fn(WorkerInfo) -> anyhow::Result<C> + Send + Sync>;

/// What every worker of a stage shares with the runtime.
#[derive(Clone)]
pub(crate) struct WorkerEnv {
    pub stage: Arc<str>,
    pub workers: usize,
    pub shutdown: Receiver<()>,
    pub stats: Arc<StageStats>,
    /// The graph run's span: each worker's `stage` span is its child.
    pub graph_span: tracing::Span,
}

/// Starts worker threads of one stage; owns the stage's channel endpoints,
/// so dropping it (after the last worker ended) ends the stream downstream.
pub(crate) trait WorkerSpawner: Send {
    fn spawn(
        &self,
        index: usize,
        env: WorkerEnv,
        on_exit: Box<dyn FnOnce(WorkerOutcome) + Send>,
    ) -> std::io::Result<JoinHandle<()>>;
}

pub(crate) struct SourceSpawner<S: Source> {
    pub make: MakeComponent<S>,
    pub output: Outputs<S::Out>,
}

pub(crate) struct StageSpawner<S: Stage> {
    pub make: MakeComponent<S>,
    pub input: Receiver<S::In>,
    pub output: Outputs<S::Out>,
}

fn spawn_thread(
    index: usize,
    env: WorkerEnv,
    on_exit: Box<dyn FnOnce(WorkerOutcome) + Send>,
    body: impl FnOnce(&WorkerEnv) -> WorkerOutcome + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("{}#{index}", env.stage))
        .spawn(move || {
            let span = tracing::info_span!(
                parent: &env.graph_span,
                "stage",
                otel.name = %env.stage,
                stage = %env.stage,
                worker = index as i64,
            );
            let _entered = span.enter();
            let outcome = catch_unwind(AssertUnwindSafe(|| body(&env))).unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                // libtorch appends its C++ stack to an error's text; the
                // first lines say what went wrong.
                let message = message
                    .split("\nException raised from")
                    .next()
                    .unwrap_or_default();
                WorkerOutcome::Failed(anyhow::anyhow!("panicked: {message}"))
            });
            if let WorkerOutcome::Failed(error) = &outcome {
                env.stats.add_error();
                tracing::warn!(error = %format!("{error:#}"), "worker failed");
            }
            on_exit(outcome);
        })
}

/// Maps a component's error to the outcome: `Stopped` is not a failure.
/// Builds worker `index` of a component with its `make` function; a failure
/// is the worker's outcome, with `what` as context.
fn start_worker<C>(
    make: &MakeComponent<C>,
    index: usize,
    env: &WorkerEnv,
    what: &'static str,
) -> Result<C, WorkerOutcome> {
    let worker = WorkerInfo {
        index,
        count: env.workers,
    };
    make(worker).map_err(|error| WorkerOutcome::Failed(error.context(what)))
}

fn outcome_of(result: anyhow::Result<()>) -> WorkerOutcome {
    match result {
        Ok(()) => WorkerOutcome::Finished,
        Err(error) if error.is::<Stopped>() => WorkerOutcome::Stopped,
        Err(error) => WorkerOutcome::Failed(error),
    }
}

impl<S: Source> WorkerSpawner for SourceSpawner<S> {
    fn spawn(
        &self,
        index: usize,
        env: WorkerEnv,
        on_exit: Box<dyn FnOnce(WorkerOutcome) + Send>,
    ) -> std::io::Result<JoinHandle<()>> {
        let make = Arc::clone(&self.make);
        let output = self.output.clone();
        spawn_thread(index, env, on_exit, move |env| {
            let mut source = match start_worker(&make, index, env, "starting the source") {
                Ok(source) => source,
                Err(failed) => return failed,
            };
            let mut out = Emitter::new(output, env.shutdown.clone(), Arc::clone(&env.stats));
            let started = Instant::now();
            let result = source.run(&mut out);
            env.stats
                .add_busy(started.elapsed().saturating_sub(out.time_waiting()));
            outcome_of(result)
        })
    }
}

impl<S: Stage> WorkerSpawner for StageSpawner<S> {
    fn spawn(
        &self,
        index: usize,
        env: WorkerEnv,
        on_exit: Box<dyn FnOnce(WorkerOutcome) + Send>,
    ) -> std::io::Result<JoinHandle<()>> {
        let make = Arc::clone(&self.make);
        let input = self.input.clone();
        let output = self.output.clone();
        spawn_thread(index, env, on_exit, move |env| {
            let mut stage = match start_worker(&make, index, env, "starting the stage") {
                Ok(stage) => stage,
                Err(failed) => return failed,
            };
            let mut out = Emitter::new(output, env.shutdown.clone(), Arc::clone(&env.stats));
            outcome_of(feed_stage(&mut stage, index, &input, &mut out, env))
        })
    }
}

/// Takes the next item, waiting if the queue is empty. `Ok(None)` is the end
/// of the stream (every producer finished and the queue is drained).
fn next_item<T>(input: &Receiver<T>, env: &WorkerEnv) -> Result<Option<T>, Stopped> {
    env.stats.sample_queue_depth(input.len());
    match input.try_recv() {
        Ok(item) => return Ok(Some(item)),
        Err(TryRecvError::Disconnected) => return Ok(None),
        Err(TryRecvError::Empty) => {}
    }
    let started = Instant::now();
    let next = select! {
        recv(input) -> item => Ok(item.ok()),
        recv(env.shutdown) -> _ => Err(Stopped),
    };
    env.stats.add_wait_input(started.elapsed());
    next
}

/// Feeds worker `index` of a stage every item of its input, then calls
/// `finish`; each call runs in a trace-level span (`item`, `finish`) that
/// names the stage and worker, child of the worker's `stage` span. (Span
/// fields take the worker as `i64`: OpenTelemetry has no unsigned integers.)
fn feed_stage<S: Stage>(
    stage: &mut S,
    index: usize,
    input: &Receiver<S::In>,
    out: &mut Emitter<S::Out>,
    env: &WorkerEnv,
) -> anyhow::Result<()> {
    while let Some(item) = next_item(input, env)? {
        env.stats.add_items_in(1);
        let _span =
            tracing::trace_span!("item", stage = %env.stage, worker = index as i64).entered();
        timed_busy(out, env, |out| stage.process(item, out))?;
    }
    let _span = tracing::trace_span!("finish", stage = %env.stage, worker = index as i64).entered();
    timed_busy(out, env, |out| stage.finish(out))
}

/// Runs `work`, counting its time as busy except what it spent blocked on
/// a full output queue.
fn timed_busy<T>(
    out: &mut Emitter<T>,
    env: &WorkerEnv,
    work: impl FnOnce(&mut Emitter<T>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let waited_before = out.time_waiting();
    let result = work(out);
    let waited = out.time_waiting() - waited_before;
    env.stats.add_busy(started.elapsed().saturating_sub(waited));
    result
}
