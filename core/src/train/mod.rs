//! Training maths: learning-rate schedules and optimisers, as OpenCLIP's
//! `open_clip_train` sets them up from its flags. Tensors and numbers only;
//! the training loop that drives them lives elsewhere.

pub mod optimizer;
pub mod schedule;
