//! clipflow-core: tensors and maths only. Models (with OpenCLIP's module tree
//! and parameter names), model configs, the CLIP tokenizer, image transforms
//! and weight-file formats. Knows nothing of actors or the CLI.

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod loss;
pub mod model;
pub mod py_literal;
pub mod shim;
pub mod tokenizer;
pub mod transform;
pub mod weights;
