//! One module per `clipflow` subcommand.

pub mod bench;
pub mod check;
pub mod convert;
pub mod doctor;
pub mod embed;
pub mod make_scenes;
pub mod models;
pub mod pretrained;
pub mod quickstart;
pub mod run;
pub mod tokenize;
pub mod train;
