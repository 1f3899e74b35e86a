//! The dataflow runtime: components ([`Source`], [`Stage`]) run on their own
//! OS threads, joined by bounded crossbeam queues (a slow consumer blocks its
//! producers, so memory stays bounded), under ractor supervisors that start,
//! restart and stop them. A stage may also read a side queue at its own
//! pace ([`SideInput`], [`Graph::add_side_queue`]). Build a [`Graph`] in Rust, or from a topology file
//! through [`crate::topology`].

pub mod generic;
mod graph;
pub(crate) mod live;
mod stage;
mod stats;
mod supervisor;
mod worker;

pub use graph::{Graph, GraphError, ItemType, RunError, StageOptions};
pub use stage::{Emitter, SideInput, Source, Stage, Stopped, WorkerInfo};
pub use stats::{RunReport, StageSnapshot, StageStats};
