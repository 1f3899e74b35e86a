//! clipflow-core: tensors and maths only. Models (with OpenCLIP's module tree
//! and parameter names), model configs, losses and the collectives between
//! ranks, training maths (optimisers, schedules, the training step) and the
//! checkpoint and run-folder layout, evaluation metrics, the CLIP tokenizer,
//! image transforms and weight-file formats. Knows nothing of actors or the
//! CLI.

pub mod activation_checkpoint;
pub mod collective;
pub mod data;
pub mod distributed;
pub mod eval;
pub mod hf_hub;
pub mod loss;
pub mod model;
pub mod object_stores;
pub mod py_literal;
pub mod shim;
pub mod tokenizer;
pub mod train;
pub mod transform;
pub mod weights;
