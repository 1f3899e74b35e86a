//! `--precision` for training, as OpenCLIP defines each value: autocast and
//! its dtype, the gradient scaler, and the dtypes of weights and inputs.

use anyhow::Result;
use tch::nn::VarStore;
use tch::Kind;

use crate::model_setup::{inference_precision, InferencePrecision};
use crate::train_args::Precision;

/// What one `--precision` value means for a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainingPrecision {
    /// How weights are stored and the forward pass runs (shared with
    /// inference: `embed` and the evaluator use the same rules).
    pub forward: InferencePrecision,
    /// `amp` (fp16 autocast) scales the loss with a gradient scaler.
    pub grad_scaler: bool,
}

impl TrainingPrecision {
    pub fn new(precision: Precision) -> Result<Self> {
        let forward = inference_precision(precision.as_str())?;
        Ok(TrainingPrecision {
            forward,
            grad_scaler: precision == Precision::Amp,
        })
    }

    /// The autocast dtype of the step, if the precision autocasts.
    pub fn autocast(self) -> Option<Kind> {
        self.forward.autocast()
    }

    /// Converts freshly built fp32 weights the way OpenCLIP's
    /// `create_model(precision=...)` does.
    pub fn prepare_weights(self, vs: &mut VarStore) {
        self.forward.prepare_weights(vs)
    }
}
