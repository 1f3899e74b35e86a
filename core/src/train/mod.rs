//! training: what `python -m open_clip_train.main` does around the model,
//! kept free of actors and the CLI.

pub mod checkpoint;
