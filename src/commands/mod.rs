//! One module per `clipflow` subcommand.

pub mod convert;
pub mod models;
pub mod train;
