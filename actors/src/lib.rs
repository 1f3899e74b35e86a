//! clipflow-actors: the actors of a clipflow pipeline and the bounded-channel
//! dataflow runtime they share. Built on clipflow-core; knows nothing of the CLI.

pub mod kinds;
pub mod runtime;
pub mod topology;
