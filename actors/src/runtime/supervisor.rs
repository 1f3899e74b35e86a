//! The control plane: ractor actors that own a running graph's lifecycle.
//!
//! One `StageSupervisor` per stage starts the stage's worker threads, hears
//! when each ends, restarts a failed worker while the stage's restart budget
//! lasts, and joins every thread before it stops. The `GraphSupervisor` links
//! them: it records the first failure, then stops the graph by closing the
//! shutdown channel, which wakes every worker blocked on a queue. Items never
//! travel through these actors' (unbounded) mailboxes, only lifecycle events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;
use crossbeam_channel::{Receiver, Sender};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::stats::StageStats;
use super::worker::{WorkerEnv, WorkerOutcome, WorkerSpawner};

/// What a stage's supervisor needs to run it.
pub(crate) struct StageLaunch {
    pub name: Arc<str>,
    pub parallelism: usize,
    pub restarts: u32,
    pub spawner: Box<dyn WorkerSpawner>,
    pub stats: Arc<StageStats>,
    /// The graph run's span, parent of every worker's span.
    pub graph_span: tracing::Span,
}

/// The first failure that stopped a graph.
#[derive(Debug)]
pub(crate) struct StageFailure {
    pub stage: String,
    pub error: anyhow::Error,
}

/// Runs the stages under their supervisors until all have ended; returns the
/// failure that stopped the graph, if one did.
pub(crate) fn run_stages(stages: Vec<StageLaunch>) -> anyhow::Result<Option<StageFailure>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control-plane runtime")?;
    let failure = Arc::new(Mutex::new(None));
    let args = GraphArgs {
        stages,
        failure: Arc::clone(&failure),
    };
    runtime.block_on(async {
        let (_graph, ended) = Actor::spawn(None, GraphSupervisor, args)
            .await
            .context("starting the graph supervisor")?;
        ended.await.context("waiting for the graph supervisor")
    })?;
    let failure = failure.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(failure)
}

fn record_failure(slot: &Mutex<Option<StageFailure>>, failure: StageFailure) {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        tracing::error!(stage = %failure.stage, error = %format!("{:#}", failure.error), "stopping the graph");
        *slot = Some(failure);
    }
}

struct GraphSupervisor;

struct GraphArgs {
    stages: Vec<StageLaunch>,
    failure: Arc<Mutex<Option<StageFailure>>>,
}

struct GraphState {
    /// Never sent on: dropping it disconnects every worker's shutdown
    /// receiver, which is how the graph is told to stop.
    shutdown: Option<Sender<()>>,
    running: HashMap<ActorId, Arc<str>>,
    failure: Arc<Mutex<Option<StageFailure>>>,
}

enum GraphMsg {
    /// A stage failed (its supervisor has recorded why): stop the others.
    StageFailed,
}

impl GraphState {
    fn fail(&mut self, failure: StageFailure) {
        record_failure(&self.failure, failure);
        self.shutdown = None;
    }
}

impl Actor for GraphSupervisor {
    type Msg = GraphMsg;
    type State = GraphState;
    type Arguments = GraphArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GraphMsg>,
        args: GraphArgs,
    ) -> Result<GraphState, ActorProcessingErr> {
        let (shutdown, stop_signal) = crossbeam_channel::bounded::<()>(0);
        let mut running = HashMap::new();
        for launch in args.stages {
            let name = Arc::clone(&launch.name);
            let stage_args = StageArgs {
                launch,
                stop_signal: stop_signal.clone(),
                graph: myself.clone(),
                failure: Arc::clone(&args.failure),
            };
            let (stage, _) =
                Actor::spawn_linked(None, StageSupervisor, stage_args, myself.get_cell()).await?;
            running.insert(stage.get_id(), name);
        }
        Ok(GraphState {
            shutdown: Some(shutdown),
            running,
            failure: args.failure,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<GraphMsg>,
        message: GraphMsg,
        state: &mut GraphState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GraphMsg::StageFailed => state.shutdown = None,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<GraphMsg>,
        event: SupervisionEvent,
        state: &mut GraphState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(stage, _, _) => {
                state.running.remove(&stage.get_id());
            }
            SupervisionEvent::ActorFailed(stage, error) => {
                let name = state
                    .running
                    .remove(&stage.get_id())
                    .map_or_else(|| "(unknown)".to_string(), |n| n.to_string());
                state.fail(StageFailure {
                    stage: name,
                    error: anyhow::anyhow!("its supervisor failed: {error}"),
                });
            }
            _ => {}
        }
        if state.running.is_empty() {
            myself.stop(None);
        }
        Ok(())
    }
}

struct StageSupervisor;

struct StageArgs {
    launch: StageLaunch,
    stop_signal: Receiver<()>,
    graph: ActorRef<GraphMsg>,
    /// Where the graph's failure is kept. A stage records its own failure
    /// here before it tells the graph and stops: ractor delivers the
    /// stage's termination ahead of ordinary messages, so a failure sent
    /// only as a message could arrive after the graph, seeing every stage
    /// ended, has already stopped.
    failure: Arc<Mutex<Option<StageFailure>>>,
}

struct StageState {
    /// Dropped once the last worker has ended, which closes the queue the
    /// stage feeds and so ends the stream for the next stage.
    spawner: Option<Box<dyn WorkerSpawner>>,
    workers: Vec<Option<JoinHandle<()>>>,
    live_workers: usize,
    restarts_left: u32,
    env: WorkerEnv,
    graph: ActorRef<GraphMsg>,
    failure: Arc<Mutex<Option<StageFailure>>>,
}

enum StageMsg {
    WorkerExited {
        index: usize,
        outcome: WorkerOutcome,
    },
}

impl StageState {
    fn is_stopping(&self) -> bool {
        matches!(
            self.env.shutdown.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Starts worker `index`; a thread that cannot start counts as a worker
    /// that failed at once.
    fn start_worker(&mut self, myself: &ActorRef<StageMsg>, index: usize) {
        let Some(spawner) = &self.spawner else {
            return;
        };
        let notify = myself.clone();
        let on_exit = Box::new(move |outcome| {
            // The supervisor outlives its workers, so this only fails if it
            // crashed, and then there is no one left to tell.
            let _ = notify.send_message(StageMsg::WorkerExited { index, outcome });
        });
        match spawner.spawn(index, self.env.clone(), on_exit) {
            Ok(handle) => self.workers[index] = Some(handle),
            Err(error) => {
                let outcome = WorkerOutcome::Failed(
                    anyhow::Error::new(error).context("starting a worker thread"),
                );
                let _ = myself.send_message(StageMsg::WorkerExited { index, outcome });
            }
        }
    }
}

impl Actor for StageSupervisor {
    type Msg = StageMsg;
    type State = StageState;
    type Arguments = StageArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<StageMsg>,
        args: StageArgs,
    ) -> Result<StageState, ActorProcessingErr> {
        let launch = args.launch;
        let mut state = StageState {
            spawner: Some(launch.spawner),
            workers: (0..launch.parallelism).map(|_| None).collect(),
            live_workers: launch.parallelism,
            restarts_left: launch.restarts,
            env: WorkerEnv {
                stage: launch.name,
                workers: launch.parallelism,
                shutdown: args.stop_signal,
                stats: launch.stats,
                graph_span: launch.graph_span,
            },
            graph: args.graph,
            failure: args.failure,
        };
        for index in 0..launch.parallelism {
            state.start_worker(&myself, index);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<StageMsg>,
        message: StageMsg,
        state: &mut StageState,
    ) -> Result<(), ActorProcessingErr> {
        let StageMsg::WorkerExited { index, outcome } = message;
        if let Some(thread) = state.workers[index].take() {
            // The thread sent this message as its last act, so it is ending.
            let _ = thread.join();
        }
        if let WorkerOutcome::Failed(error) = outcome {
            if state.restarts_left > 0 && !state.is_stopping() {
                state.restarts_left -= 1;
                state.env.stats.add_restart();
                tracing::warn!(stage = %state.env.stage, worker = index, error = %format!("{error:#}"), "restarting worker");
                state.start_worker(&myself, index);
                return Ok(());
            }
            let failure = StageFailure {
                stage: state.env.stage.to_string(),
                error,
            };
            record_failure(&state.failure, failure);
            let _ = state.graph.send_message(GraphMsg::StageFailed);
        }
        state.live_workers -= 1;
        if state.live_workers == 0 {
            state.spawner = None;
            myself.stop(None);
        }
        Ok(())
    }
}
