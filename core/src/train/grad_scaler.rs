//! The gradient scaler of `--precision amp` (fp16 autocast), with the
//! semantics and defaults of `torch.amp.GradScaler`: the loss is multiplied by
//! a scale before backward; before the optimiser step the gradients are
//! divided by it and checked for inf/NaN; a step with non-finite gradients is
//! skipped and the scale halves, and after 2000 good steps in a row it
//! doubles.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::weights::Value;

/// `torch.amp.GradScaler()`'s defaults.
const INIT_SCALE: f64 = 65536.0;
const GROWTH_FACTOR: f64 = 2.0;
const BACKOFF_FACTOR: f64 = 0.5;
const GROWTH_INTERVAL: i64 = 2000;

#[derive(Debug)]
pub struct GradScaler {
    /// The current scale, a float32 scalar on the training device.
    scale: Tensor,
    /// Good steps since the scale last changed (int32 scalar).
    growth_tracker: Tensor,
    /// Set by `unscale` for the current step: 1.0 when a gradient held a
    /// non-finite value.
    found_inf: Option<Tensor>,
}

impl GradScaler {
    pub fn new(device: Device) -> Self {
        GradScaler {
            scale: Tensor::from(INIT_SCALE as f32).to_device(device),
            growth_tracker: Tensor::from(0i32).to_device(device),
            found_inf: None,
        }
    }

    /// `loss * scale`, the value to call `backward` on.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * &self.scale.to_kind(loss.kind())
    }

    /// Divides every gradient by the scale in place and records whether any
    /// is non-finite (`GradScaler.unscale_`). Once per step: a second call
    /// before [`GradScaler::update`] does nothing, as in PyTorch.
    pub fn unscale(&mut self, grads: &mut [Tensor]) {
        if self.found_inf.is_some() {
            return;
        }
        // PyTorch computes 1/scale in float64, then rounds it to float32.
        let inv_scale = self
            .scale
            .to_kind(Kind::Double)
            .reciprocal()
            .to_kind(Kind::Float);
        let mut found_inf = Tensor::zeros([], (Kind::Float, self.scale.device()));
        for grad in grads.iter_mut() {
            let _ = grad.g_mul_(&inv_scale.to_kind(grad.kind()));
            let non_finite = grad.isfinite().logical_not().any().to_kind(Kind::Float);
            found_inf = found_inf.maximum(&non_finite);
        }
        self.found_inf = Some(found_inf);
    }

    /// True when the gradients unscaled this step are all finite, so the
    /// optimiser may step (`GradScaler.step` skips it otherwise).
    pub fn step_allowed(&self) -> Result<bool> {
        match &self.found_inf {
            Some(found_inf) => Ok(found_inf.double_value(&[]) == 0.0),
            None => bail!("GradScaler: step before unscale"),
        }
    }

    /// Adjusts the scale from this step's result (`GradScaler.update`).
    pub fn update(&mut self) -> Result<()> {
        let Some(found_inf) = self.found_inf.take() else {
            bail!("GradScaler: update before unscale");
        };
        let _ = self.scale.internal_amp_update_scale_(
            &self.growth_tracker,
            &found_inf,
            GROWTH_FACTOR,
            BACKOFF_FACTOR,
            GROWTH_INTERVAL,
        );
        Ok(())
    }

    pub fn scale_value(&self) -> f64 {
        self.scale.double_value(&[])
    }

    /// `GradScaler.state_dict()`: what OpenCLIP stores under `"scaler"`.
    pub fn state_dict(&self) -> Value {
        let entry = |key: &str, value: Value| (Value::Str(key.into()), value);
        Value::Dict(vec![
            entry("scale", Value::Float(self.scale_value())),
            entry("growth_factor", Value::Float(GROWTH_FACTOR)),
            entry("backoff_factor", Value::Float(BACKOFF_FACTOR)),
            entry("growth_interval", Value::Int(GROWTH_INTERVAL)),
            entry(
                "_growth_tracker",
                Value::Int(self.growth_tracker.int64_value(&[])),
            ),
        ])
    }

    /// Restores [`GradScaler::state_dict`]'s scale and growth tracker.
    pub fn load_state_dict(&mut self, state: &Value) -> Result<()> {
        let number = |key: &str| -> Result<f64> {
            match state.get(key) {
                Some(Value::Float(x)) => Ok(*x),
                Some(Value::Int(x)) => Ok(*x as f64),
                _ => bail!("the checkpoint's scaler state has no number `{key}`"),
            }
        };
        let device = self.scale.device();
        self.scale = Tensor::from(number("scale")? as f32).to_device(device);
        self.growth_tracker = Tensor::from(number("_growth_tracker")? as i32).to_device(device);
        Ok(())
    }
}
