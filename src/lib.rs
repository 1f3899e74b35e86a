//! The clipflow command line as a library: flag definitions and the
//! subcommands behind `clipflow train`, `embed`, `tokenize`, `convert`, `models`,
//! `run`, `bench`, the topology files they run and the tracing export they
//! share.

pub mod commands;
pub mod model_setup;
pub mod plot;
pub mod remote_sync;
pub mod run_config;
pub mod telemetry;
pub mod topology_files;
pub mod train_args;
pub mod training;
