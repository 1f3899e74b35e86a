//! clipflow-actors: the actors of a clipflow pipeline and the bounded-channel
//! dataflow runtime they share. Built on clipflow-core; knows nothing of the CLI.

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
