//! clipflow-actors: the actors of a clipflow pipeline and the bounded-channel
//! dataflow runtime they share. Built on clipflow-core; knows nothing of the
//! CLI.
//!
//! # Embedding the actors in a pipeline of your own
//!
//! A pipeline is a graph of components joined by bounded queues: a
//! [`runtime::Source`] produces items, a [`runtime::Stage`] turns each item
//! it takes into zero or more, and a full queue blocks its producers, so
//! memory stays bounded. Each component runs on threads of its own (one per
//! worker, `parallelism` of them) and owns its state; nothing is shared
//! behind a lock between stages.
//!
//! 1. Write a stage: plain synchronous Rust, one item at a time.
//!
//!    ```
//!    use clipflow_actors::runtime::{Emitter, Stage};
//!
//!    /// Passes on the numbers it is given, doubled.
//!    struct Double;
//!
//!    impl Stage for Double {
//!        type In = u64;
//!        type Out = u64;
//!        fn process(&mut self, n: u64, out: &mut Emitter<u64>) -> anyhow::Result<()> {
//!            out.emit(2 * n)?;
//!            Ok(())
//!        }
//!    }
//!    ```
//!
//! 2. Register it as a kind beside clipflow's own ([`kinds::standard_registry`]:
//!    `shard-reader`, `validation-reader`, `decoder`, `augmenter`, `batcher`,
//!    ...). Its `configure` function reads the component's settings from
//!    the topology file; a setting it does not read is an error naming the
//!    file and line.
//!
//!    ```
//!    # use clipflow_actors::runtime::{Emitter, Stage};
//!    # struct Double;
//!    # impl Stage for Double {
//!    #     type In = u64;
//!    #     type Out = u64;
//!    #     fn process(&mut self, n: u64, out: &mut Emitter<u64>) -> anyhow::Result<()> {
//!    #         out.emit(2 * n)?;
//!    #         Ok(())
//!    #     }
//!    # }
//!    use clipflow_actors::kinds::standard_registry;
//!    use clipflow_actors::topology::{FlagValues, Restarts, Topology};
//!
//!    let mut registry = standard_registry();
//!    registry.register_stage("double", "doubles numbers", Restarts::Allowed, |_settings| {
//!        Ok(|_worker| Ok(Double))
//!    });
//!    let topology = r#"
//!    [stages.numbers]
//!    kind = "counter"
//!    count = 100
//!
//!    [stages.double]
//!    kind = "double"
//!    inputs = ["numbers"]
//!    parallelism = 2
//!
//!    [stages.drain]
//!    kind = "null"
//!    inputs = ["double"]
//!    "#;
//!    let flags = FlagValues::new();
//!    let file = std::path::Path::new("mine.toml");
//!    let checked = Topology::parse(file, topology, &flags, &registry)?;
//!    let report = checked.into_graph()?.run()?;
//!    assert_eq!(report.stage("drain").unwrap().items_in, 100);
//!    # anyhow::Ok(())
//!    ```
//!
//! 3. Link it in a topology file ([`topology`]; the format is in
//!    `topologies/README.md`). A file may extend clipflow's own
//!    (`extends = "train-data.toml"`) and add, remove or re-link stages
//!    instead of copying them. A graph can also be built in Rust with
//!    [`runtime::Graph`].
//!
//! The loading path's items carry their place in the data
//! ([`load_stream::LoadItem`], [`load_stream::Place`]): a stage between the
//! reader and the batcher keeps each item's place, and marks a sample it
//! leaves out on purpose as [`bad_data::SampleOrSkip::Filtered`], so the
//! batcher does not wait for it. `examples/caption_filter.rs` puts a stage
//! that keeps samples by caption between the decoder and the augmenter of
//! the loading path (`cargo run --example caption_filter -- SHARDS WORD`);
//! `examples/custom_pipeline.rs` builds a pipeline of its own kinds.
//!
//! A stage that takes the training graph's events ([`train_events`]) runs
//! beside the logger in `clipflow train` through
//! `clipflow::training::run_with_kinds`, at the pace of the slowest of the
//! step executor's consumers.

pub mod augmenter;
pub mod bad_data;
pub mod batcher;
pub mod checkpointer;
pub mod decoder;
pub mod evaluator;
pub mod kinds;
pub mod load_stream;
pub mod remote_folder;
pub mod remote_syncer;
pub mod report;
pub mod runtime;
pub mod shard_reader;
pub mod step_executor;
pub mod topology;
pub mod train_events;
pub mod train_logger;
pub mod validation_reader;
