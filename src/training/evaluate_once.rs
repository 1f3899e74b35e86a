//! `clipflow train` with no training data evaluates the model once, as
//! OpenCLIP does. The validation batches come from the validation path of
//! the training graph, run alone (`topologies/evaluate.toml`), whose last
//! stage hands them to the evaluation running beside it.

use std::time::Duration;

use anyhow::{anyhow, Result};
use clipflow_actors::batcher::BatchItem;
use clipflow_actors::evaluator::evaluate;
use clipflow_actors::kinds::standard_registry;
use clipflow_actors::runtime::{Emitter, Stage};
use clipflow_actors::topology::{Restarts, Topology, SIDE_QUEUE_CAPACITY};
use clipflow_core::model::Clip;
use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use super::setup::PreparedRun;
use crate::topology_files;
use crate::topology_files::run_graph;
use crate::topology_files::topology_flags;
use crate::train_args::TrainArgs;

/// The topology in clipflow's topologies/ folder that this evaluation runs.
pub const TOPOLOGY_NAME: &str = "evaluate.toml";

/// How often the evaluation, waiting for a batch, looks whether the
/// validation path has stopped.
const POLL: Duration = Duration::from_millis(50);

/// The last stage of the validation path: sends each batch on to the
/// evaluation.
struct ValidationOutput {
    batches: Sender<BatchItem>,
}

impl Stage for ValidationOutput {
    type In = BatchItem;
    type Out = ();

    fn process(&mut self, item: BatchItem, _out: &mut Emitter<()>) -> Result<()> {
        self.batches
            .send(item)
            .map_err(|_| anyhow!("the evaluation stopped taking validation batches"))
    }
}

/// The metrics of `model` after `run.start_epoch` epochs, their progress
/// lines logged as they come.
pub fn evaluate_once(
    args: &TrainArgs,
    run: &PreparedRun,
    model: &Clip,
) -> Result<Vec<(String, f64)>> {
    let mut flags = topology_flags(args);
    flags.set("val-data", args.val_data.as_deref().unwrap_or_default());
    let passes = u64::from(run.evaluator.validates_after(run.start_epoch));
    flags.set("validation-passes", &passes.to_string());
    let (sender, receiver) = bounded(SIDE_QUEUE_CAPACITY);
    let mut registry = standard_registry();
    registry.register_stage(
        "validation-output",
        "hands validation batches to the evaluation beside the graph",
        Restarts::Forbidden,
        move |_settings| {
            let batches = sender.clone();
            Ok(move |_worker| {
                Ok(ValidationOutput {
                    batches: batches.clone(),
                })
            })
        },
    );
    let sources = topology_files::standard(TOPOLOGY_NAME)?;
    let graph = Topology::check(&sources, &flags, &registry)?.into_graph()?;
    // The registry holds a sender too; the batches end with the graph.
    drop(registry);
    let name = sources.named().path.display().to_string();
    std::thread::scope(|scope| {
        let loading = scope.spawn(|| run_graph(graph, &name, "the validation path was stopped"));
        let mut path_ended = false;
        let mut batches = || loop {
            match receiver.recv_timeout(POLL) {
                Ok(item) => return Some(item),
                Err(RecvTimeoutError::Timeout) if !loading.is_finished() => {}
                Err(_) => {
                    path_ended = true;
                    return None;
                }
            }
        };
        let metrics = evaluate(
            model,
            &run.evaluator,
            run.start_epoch,
            &mut |progress| {
                if let Err(error) = run.logger.lock().evaluation_progress(&progress) {
                    eprintln!("clipflow: writing the log: {error:#}");
                }
            },
            &mut batches,
        );
        drop(receiver);
        let loaded = loading
            .join()
            .map_err(|_| anyhow!("the validation path panicked"))?;
        match (metrics, loaded) {
            (Ok(metrics), loaded) => loaded.map(|_| metrics),
            // The path stopped first: its error is the cause.
            (Err(_), Err(path)) if path_ended => Err(path),
            (Err(evaluation), _) => Err(evaluation),
        }
    })
}
