//! Learning-rate schedules (`--lr-scheduler cosine | const | const-cooldown`)
//! with OpenCLIP's step counting, so that the learning rate at every step
//! equals the one `open_clip_train` assigns.
//!
//! OpenCLIP counts optimiser steps: an epoch of `num_batches` loader batches
//! with `--accum-freq` k makes `num_batches / k` steps (integer division),
//! and training lasts that times `--epochs`. Before every loader batch it
//! assigns the learning rate of the step that batch belongs to
//! ([`scheduler_step`]). Every schedule first warms up linearly over
//! `--warmup` steps, reaching `--lr` at step `warmup - 1`; then
//! - `cosine` decays along half a cosine from `--lr` to 0 at the last step;
//! - `const` stays at `--lr`;
//! - `const-cooldown` stays at `--lr` until the last `--epochs-cooldown`
//!   epochs' steps, then decays as `(1 - progress)^--lr-cooldown-power` to
//!   `--lr-cooldown-end`.
//!
//! With `--skip-scheduler` OpenCLIP still builds the schedule (and so still
//! rejects const-cooldown without `--epochs-cooldown`) but never applies it:
//! the optimiser keeps the learning rate it was built with (`--lr`), or the
//! one a resumed optimiser state carries.

use std::f64::consts::PI;

use anyhow::{bail, Context, Result};

/// The shape of the schedule after warmup (`--lr-scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrScheduleKind {
    Cosine,
    Const,
    ConstCooldown,
}

/// The flags that set the schedule, as OpenCLIP names them.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleFlags {
    /// `--lr-scheduler`.
    pub kind: LrScheduleKind,
    /// `--lr`, the peak learning rate.
    pub lr: f64,
    /// `--warmup`, in optimiser steps.
    pub warmup: u64,
    /// `--epochs`.
    pub epochs: u64,
    /// `--epochs-cooldown`; const-cooldown needs it, the others ignore it.
    pub epochs_cooldown: Option<u64>,
    /// `--accum-freq`.
    pub accum_freq: u64,
    /// `--lr-cooldown-power`.
    pub lr_cooldown_power: f64,
    /// `--lr-cooldown-end`.
    pub lr_cooldown_end: f64,
}

/// A learning rate for every optimiser step.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    kind: LrScheduleKind,
    base_lr: f64,
    warmup_steps: u64,
    total_steps: u64,
    cooldown_steps: u64,
    cooldown_power: f64,
    cooldown_end_lr: f64,
}

/// Optimiser steps in one epoch of `num_batches` loader batches: OpenCLIP's
/// `dataloader.num_batches // accum_freq`.
pub fn steps_per_epoch(num_batches: u64, accum_freq: u64) -> Result<u64> {
    if accum_freq == 0 {
        bail!("--accum-freq must be at least 1");
    }
    Ok(num_batches / accum_freq)
}

/// The schedule step OpenCLIP assigns before loader batch `batch_index`
/// (counted from 0 within `epoch`, itself counted from 0). With
/// `--accum-freq` k, k consecutive batches share a step; when k does not
/// divide `num_batches`, the leftover batches at an epoch's end get the next
/// epoch's first step (the last epoch's get `total_steps`) although no
/// optimiser step follows them.
pub fn scheduler_step(
    num_batches: u64,
    accum_freq: u64,
    epoch: u64,
    batch_index: u64,
) -> Result<u64> {
    let per_epoch = steps_per_epoch(num_batches, accum_freq)?;
    per_epoch
        .checked_mul(epoch)
        .and_then(|start| start.checked_add(batch_index / accum_freq))
        .context("the schedule step overflows 64 bits")
}

impl LrSchedule {
    /// A schedule over `total_steps` optimiser steps. `cooldown_steps`,
    /// `cooldown_power` and `cooldown_end_lr` only matter to const-cooldown.
    pub fn new(
        kind: LrScheduleKind,
        base_lr: f64,
        warmup_steps: u64,
        total_steps: u64,
        cooldown_steps: u64,
        cooldown_power: f64,
        cooldown_end_lr: f64,
    ) -> Result<Self> {
        for (flag, value) in [
            ("--lr", base_lr),
            ("--lr-cooldown-power", cooldown_power),
            ("--lr-cooldown-end", cooldown_end_lr),
        ] {
            if !value.is_finite() {
                bail!("{flag} must be a finite number, got {value}");
            }
        }
        for (what, steps) in [
            ("total", total_steps),
            ("warmup", warmup_steps),
            ("cooldown", cooldown_steps),
        ] {
            if i64::try_from(steps).is_err() {
                bail!("{steps} {what} steps is too many for a learning-rate schedule");
            }
        }
        Ok(LrSchedule {
            kind,
            base_lr,
            warmup_steps,
            total_steps,
            cooldown_steps,
            cooldown_power,
            cooldown_end_lr,
        })
    }

    /// The schedule OpenCLIP's `main` builds from its flags for a training
    /// set of `num_batches` loader batches per epoch: `total_steps` is
    /// `(num_batches // accum_freq) * epochs`, and the cooldown lasts
    /// `(num_batches // accum_freq) * epochs_cooldown` steps.
    pub fn from_flags(flags: &ScheduleFlags, num_batches: u64) -> Result<Self> {
        let per_epoch = steps_per_epoch(num_batches, flags.accum_freq)?;
        let steps_in = |epochs: u64, flag: &str| {
            per_epoch
                .checked_mul(epochs)
                .with_context(|| format!("{flag} {epochs} of {per_epoch} steps overflows 64 bits"))
        };
        let total_steps = steps_in(flags.epochs, "--epochs")?;
        let cooldown_steps = match (flags.kind, flags.epochs_cooldown) {
            (LrScheduleKind::ConstCooldown, None) => {
                bail!("--lr-scheduler const-cooldown needs --epochs-cooldown (the number of cooldown epochs)")
            }
            (LrScheduleKind::ConstCooldown, Some(epochs)) => steps_in(epochs, "--epochs-cooldown")?,
            _ => 0,
        };
        LrSchedule::new(
            flags.kind,
            flags.lr,
            flags.warmup,
            total_steps,
            cooldown_steps,
            flags.lr_cooldown_power,
            flags.lr_cooldown_end,
        )
    }

    /// Optimiser steps in the whole run.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// The learning rate at optimiser step `step` (from 0), computed with
    /// OpenCLIP's formulas in the same floating-point order.
    ///
    /// The decay formulas divide by the length of the decay, which is 0 when
    /// warmup takes every step (cosine) or the cooldown has no steps
    /// (const-cooldown); OpenCLIP then fails with ZeroDivisionError on the
    /// one step it could reach there, `total_steps` (assigned to leftover
    /// accumulation batches that no optimiser step follows). Here that step
    /// gets the decay's end value instead.
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        // Signed like Python's ints: the decay may start before step 0.
        let (step, total) = (step as i64, self.total_steps as i64);
        match self.kind {
            LrScheduleKind::Const => self.base_lr,
            LrScheduleKind::Cosine => {
                let done = step - self.warmup_steps as i64;
                let length = total - self.warmup_steps as i64;
                let cosine = if length == 0 {
                    PI.cos()
                } else {
                    (PI * done as f64 / length as f64).cos()
                };
                0.5 * (1.0 + cosine) * self.base_lr
            }
            LrScheduleKind::ConstCooldown => {
                let cooldown_start = total - self.cooldown_steps as i64;
                if step < cooldown_start {
                    return self.base_lr;
                }
                let done = step - cooldown_start;
                let length = total - cooldown_start;
                let progress = if length == 0 {
                    1.0
                } else {
                    done as f64 / length as f64
                };
                let decay = (1.0 - progress).powf(self.cooldown_power);
                decay * (self.base_lr - self.cooldown_end_lr) + self.cooldown_end_lr
            }
        }
    }
}
