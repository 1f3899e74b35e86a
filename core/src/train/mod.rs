//! Training: what `python -m open_clip_train.main` does around the model,
//! as tensors and numbers, kept free of actors and the CLI: learning-rate
//! schedules, optimisers, the gradient scaler, tower locking, one training
//! step (alone or as one rank of a data-parallel group), snapshots of
//! the trained state, and the checkpoint and run-folder layout.

pub mod data_parallel;
pub mod grad_scaler;
pub mod lock;
pub mod optimizer;
pub mod run_folder;
pub mod schedule;
pub mod snapshot;
pub mod trainer;
