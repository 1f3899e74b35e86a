//! [`Graph`]: a pipeline built in Rust from sources and stages joined by
//! bounded queues, checked as it is built (names, links, item types), and
//! [`Graph::run`], which launches it under its supervisors and waits for it.
//!
//! A component's output feeds one stage, or, for item types the graph was
//! told it may copy ([`Graph::allow_fan_out`]), several: a fan-out, where
//! each of them gets every item and the slowest sets the pace. A stage may
//! also take one producer's output as a side queue that it reads when it
//! chooses ([`Graph::add_side_queue`]).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, Sender};

use super::live::LiveStatus;
use super::stage::{Outputs, SideInput, Source, Stage, WorkerInfo};
use super::stats::{RunReport, StageStats};
use super::supervisor::{self, StageLaunch};
use super::worker::{SourceSpawner, StageSpawner, WorkerSpawner};

/// An item type, compared by `TypeId` and shown by a short name (`Vec<u8>`).
#[derive(Clone, Copy, Debug)]
pub struct ItemType {
    id: TypeId,
    full_name: &'static str,
}

impl ItemType {
    pub fn of<T: 'static>() -> Self {
        ItemType {
            id: TypeId::of::<T>(),
            full_name: std::any::type_name::<T>(),
        }
    }

    /// The type's name without module paths: `alloc::vec::Vec<u8>` -> `Vec<u8>`.
    pub fn name(&self) -> String {
        let mut name = String::new();
        let mut segment_start = 0;
        let mut chars = self.full_name.chars().peekable();
        while let Some(c) = chars.next() {
            if c == ':' && chars.peek() == Some(&':') {
                chars.next();
                name.truncate(segment_start);
            } else {
                name.push(c);
                if !(c.is_alphanumeric() || c == '_') {
                    segment_start = name.len();
                }
            }
        }
        name
    }

    /// True for `()`, the output type of a sink.
    pub fn is_unit(&self) -> bool {
        self.id == TypeId::of::<()>()
    }
}

impl PartialEq for ItemType {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

/// How a component runs: its worker count, input queue size, restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageOptions {
    /// Worker threads, each with its own instance of the component.
    pub parallelism: usize,
    /// Capacity of the stage's input queue (ignored for a source).
    pub capacity: usize,
    /// How many times a failed worker is restarted before the graph stops.
    /// Only for stages that keep no state between items.
    pub restarts: u32,
}

impl Default for StageOptions {
    fn default() -> Self {
        StageOptions {
            parallelism: 1,
            capacity: 64,
            restarts: 0,
        }
    }
}

/// A mistake in how a graph is put together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("two components are named '{0}'")]
    DuplicateName(String),
    #[error("stage '{stage}' reads from '{input}', which is not defined (earlier in the graph)")]
    UnknownInput { stage: String, input: String },
    #[error("stage '{stage}' has no inputs")]
    NoInputs { stage: String },
    #[error("stage '{stage}' takes {expected} but its input '{input}' emits {found}")]
    TypeMismatch {
        stage: String,
        input: String,
        expected: String,
        found: String,
    },
    #[error("'{producer}' already feeds '{first}', so it cannot also feed '{second}': its items ({item_type}) go to one stage, as they cannot be copied to several")]
    OutputTaken {
        producer: String,
        first: String,
        second: String,
        item_type: String,
    },
    #[error("'{stage}': {what} must be at least 1")]
    Zero { stage: String, what: &'static str },
    #[error(
        "'{stage}' is a source; sources cannot be restarted (they would repeat or lose items)"
    )]
    SourceRestarts { stage: String },
    #[error("the output of '{stage}' ({item_type}) goes nowhere: add a stage that reads from it")]
    DanglingOutput { stage: String, item_type: String },
    #[error("the graph has no components")]
    Empty,
}

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The graph was not launched: it is incomplete.
    #[error(transparent)]
    Invalid(GraphError),
    /// The control plane could not start.
    #[error("could not launch the graph: {0:#}")]
    Launch(anyhow::Error),
    /// A stage failed (after its restarts) and the graph was stopped; the
    /// report holds the counters once every worker had ended.
    #[error("stage '{stage}' failed: {error:#}")]
    StageFailed {
        stage: String,
        error: anyhow::Error,
        report: Box<RunReport>,
    },
}

/// Connects a component to its consumers' queues once they exist: the
/// boxed `Sender<Out>` of each, and the boxed `fn(&Out) -> Out` that copies
/// items for a fan-out.
type Wire = Box<
    dyn FnOnce(Vec<Box<dyn Any + Send>>, Option<&(dyn Any + Send)>) -> Box<dyn WorkerSpawner>
        + Send,
>;

struct Node {
    name: String,
    options: StageOptions,
    output_type: ItemType,
    /// The stages this node's output feeds, once added.
    consumers: Vec<String>,
    /// `Sender<Out>` of each consumer's queue, boxed until launch.
    outputs: Vec<Box<dyn Any + Send>>,
    wire: Wire,
    stats: Arc<StageStats>,
}

/// A dataflow graph under construction. Add producers before the stages that
/// read from them; then [`Graph::run`].
#[derive(Default)]
pub struct Graph {
    nodes: Vec<Node>,
    by_name: HashMap<String, usize>,
    /// The item types that may fan out, with their boxed `fn(&T) -> T`.
    copiers: HashMap<TypeId, Box<dyn Any + Send>>,
    live_status: bool,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Draws a per-stage status line on stderr while running (only when
    /// stderr is a terminal).
    pub fn show_live_status(&mut self, show: bool) {
        self.live_status = show;
    }

    /// Lets an output of items of type `T` feed several stages, each of
    /// which gets a copy of every item.
    pub fn allow_fan_out<T: Clone + Send + 'static>(&mut self) {
        let copy: fn(&T) -> T = T::clone;
        self.copiers.insert(TypeId::of::<T>(), Box::new(copy));
    }

    /// Adds a source named `name`; `make` builds one instance per worker.
    pub fn add_source<S, M>(
        &mut self,
        name: &str,
        options: StageOptions,
        make: M,
    ) -> Result<(), GraphError>
    where
        S: Source,
        M: Fn(WorkerInfo) -> anyhow::Result<S> + Send + Sync + 'static,
    {
        self.check_new(name, &options)?;
        if options.restarts > 0 {
            return Err(GraphError::SourceRestarts {
                stage: name.to_string(),
            });
        }
        let make = Arc::new(make);
        let wire: Wire = Box::new(move |senders, copy| {
            Box::new(SourceSpawner::<S> {
                make,
                output: downcast_outputs(senders, copy),
            })
        });
        let stats = StageStats::new(name, options.parallelism, None);
        self.push(name, options, ItemType::of::<S::Out>(), wire, stats);
        Ok(())
    }

    /// Adds a stage named `name` that reads the outputs of `inputs` (merged
    /// into one queue of `options.capacity` items); `make` builds one
    /// instance per worker.
    pub fn add_stage<S, M>(
        &mut self,
        name: &str,
        inputs: &[&str],
        options: StageOptions,
        make: M,
    ) -> Result<(), GraphError>
    where
        S: Stage,
        M: Fn(WorkerInfo) -> anyhow::Result<S> + Send + Sync + 'static,
    {
        self.check_new(name, &options)?;
        if options.capacity == 0 {
            return Err(GraphError::Zero {
                stage: name.to_string(),
                what: "capacity",
            });
        }
        if inputs.is_empty() {
            return Err(GraphError::NoInputs {
                stage: name.to_string(),
            });
        }
        let expected = ItemType::of::<S::In>();
        for input in inputs {
            self.check_input(name, input, expected)?;
        }
        let (sender, receiver) = bounded::<S::In>(options.capacity);
        for input in inputs {
            let index = self.by_name[*input];
            let producer = &mut self.nodes[index];
            producer.consumers.push(name.to_string());
            producer.outputs.push(Box::new(sender.clone()));
        }
        let stats = StageStats::new(name, options.parallelism, Some(options.capacity));
        let probe = receiver.clone();
        stats.set_queue_probe(Some(Box::new(move || probe.len())));
        let make = Arc::new(make);
        let wire: Wire = Box::new(move |senders, copy| {
            Box::new(StageSpawner::<S> {
                make,
                input: receiver,
                output: downcast_outputs(senders, copy),
            })
        });
        self.push(name, options, ItemType::of::<S::Out>(), wire, stats);
        Ok(())
    }

    /// A queue of `capacity` items from `producer` to the stage `consumer`
    /// (added next, with [`Graph::add_stage`]), which reads it at its own
    /// pace through the returned [`SideInput`], apart from its inputs. The
    /// producer's output is checked and taken as by an input.
    pub fn add_side_queue<T: Send + 'static>(
        &mut self,
        consumer: &str,
        producer: &str,
        capacity: usize,
    ) -> Result<SideInput<T>, GraphError> {
        if capacity == 0 {
            return Err(GraphError::Zero {
                stage: consumer.to_string(),
                what: "capacity",
            });
        }
        let expected = ItemType::of::<T>();
        self.check_input(consumer, producer, expected)?;
        let (sender, receiver) = bounded::<T>(capacity);
        let index = self.by_name[producer];
        let node = &mut self.nodes[index];
        node.consumers.push(consumer.to_string());
        node.outputs.push(Box::new(sender));
        Ok(SideInput::new(receiver))
    }

    /// Live counters of every component, in the order they were added; they
    /// can be read from another thread while the graph runs.
    pub fn stats(&self) -> Vec<Arc<StageStats>> {
        self.nodes.iter().map(|n| Arc::clone(&n.stats)).collect()
    }

    /// Runs the graph on this thread until every component has finished, or
    /// until one fails (after its restarts); every worker thread has been
    /// joined when it returns. Must not be called from inside a tokio
    /// runtime (use `spawn_blocking` there).
    ///
    /// The run is a `graph` span (child of the caller's current span), the
    /// parent of each worker's `stage` span, itself the parent of the
    /// trace-level span of every item the worker handles.
    pub fn run(self) -> Result<RunReport, RunError> {
        self.check_complete().map_err(RunError::Invalid)?;
        let stats = self.stats();
        let copiers = self.copiers;
        let live = self
            .live_status
            .then(|| LiveStatus::start(stats.clone()))
            .flatten();
        let graph_span = tracing::info_span!("graph", stages = self.nodes.len());
        let started = Instant::now();
        let stages = self
            .nodes
            .into_iter()
            .map(|node| StageLaunch {
                name: node.name.as_str().into(),
                parallelism: node.options.parallelism,
                restarts: node.options.restarts,
                spawner: (node.wire)(
                    node.outputs,
                    copiers.get(&node.output_type.id).map(|copy| copy.as_ref()),
                ),
                stats: node.stats,
                graph_span: graph_span.clone(),
            })
            .collect();
        let failure = graph_span.in_scope(|| supervisor::run_stages(stages));
        let elapsed = started.elapsed();
        if let Some(live) = live {
            live.stop();
        }
        for s in &stats {
            s.set_queue_probe(None);
        }
        let report = RunReport {
            elapsed,
            stages: stats.iter().map(|s| s.snapshot()).collect(),
        };
        match failure.map_err(RunError::Launch)? {
            None => Ok(report),
            Some(failure) => Err(RunError::StageFailed {
                stage: failure.stage,
                error: failure.error,
                report: Box::new(report),
            }),
        }
    }

    /// Every output must feed a stage, except a sink's `()`.
    fn check_complete(&self) -> Result<(), GraphError> {
        if self.nodes.is_empty() {
            return Err(GraphError::Empty);
        }
        match self
            .nodes
            .iter()
            .find(|n| n.consumers.is_empty() && !n.output_type.is_unit())
        {
            Some(node) => Err(GraphError::DanglingOutput {
                stage: node.name.clone(),
                item_type: node.output_type.name(),
            }),
            None => Ok(()),
        }
    }

    /// Whether `input` exists, emits `expected`, and may feed `stage` (its
    /// output feeds nothing yet, or its items may be copied).
    fn check_input(&self, stage: &str, input: &str, expected: ItemType) -> Result<(), GraphError> {
        let producer = self.node(input).ok_or_else(|| GraphError::UnknownInput {
            stage: stage.to_string(),
            input: input.to_string(),
        })?;
        if producer.output_type != expected {
            return Err(GraphError::TypeMismatch {
                stage: stage.to_string(),
                input: input.to_string(),
                expected: expected.name(),
                found: producer.output_type.name(),
            });
        }
        match producer.consumers.first() {
            Some(first) if !self.copiers.contains_key(&expected.id) => {
                Err(GraphError::OutputTaken {
                    producer: input.to_string(),
                    first: first.clone(),
                    second: stage.to_string(),
                    item_type: expected.name(),
                })
            }
            _ => Ok(()),
        }
    }

    fn node(&self, name: &str) -> Option<&Node> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    fn check_new(&self, name: &str, options: &StageOptions) -> Result<(), GraphError> {
        if self.by_name.contains_key(name) {
            return Err(GraphError::DuplicateName(name.to_string()));
        }
        if options.parallelism == 0 {
            return Err(GraphError::Zero {
                stage: name.to_string(),
                what: "parallelism",
            });
        }
        Ok(())
    }

    fn push(
        &mut self,
        name: &str,
        options: StageOptions,
        output_type: ItemType,
        wire: Wire,
        stats: StageStats,
    ) {
        self.by_name.insert(name.to_string(), self.nodes.len());
        self.nodes.push(Node {
            name: name.to_string(),
            options,
            output_type,
            consumers: Vec::new(),
            outputs: Vec::new(),
            wire,
            stats: Arc::new(stats),
        });
    }
}

/// The senders the consumers handed to this component (none for a sink),
/// with the copier of a fan-out. The types were checked when the consumers
/// were added, so the downcasts hold.
fn downcast_outputs<T: 'static>(
    senders: Vec<Box<dyn Any + Send>>,
    copy: Option<&(dyn Any + Send)>,
) -> Outputs<T> {
    let mut senders: Vec<Sender<T>> = senders
        .into_iter()
        .filter_map(|boxed| boxed.downcast::<Sender<T>>().ok().map(|sender| *sender))
        .collect();
    let copy = copy.and_then(|copy| copy.downcast_ref::<fn(&T) -> T>().copied());
    match (senders.len(), copy) {
        (0, _) => Outputs::None,
        // Several senders come with a copier: add_stage checks it.
        (1, _) | (_, None) => Outputs::One(senders.swap_remove(0)),
        (_, Some(copy)) => Outputs::FanOut { senders, copy },
    }
}
