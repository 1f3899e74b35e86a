//! The clipflow command line as a library: flag definitions and the
//! subcommands behind `clipflow train`, `embed`, `tokenize`, `convert`, `models`.

pub mod commands;
pub mod runtime;
pub mod train_args;
