//! clipflow-core: tensors and maths only. Models (with OpenCLIP's module tree
//! and parameter names), model configs, the CLIP tokenizer, image transforms
//! and weight-file formats. Knows nothing of actors or the CLI.

pub mod data;
pub mod loss;
pub mod model;
pub mod shim;
pub mod tokenizer;
pub mod train;
pub mod transform;
pub mod weights;
