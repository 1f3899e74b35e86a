//! One optimiser step of `open_clip_train.train.train_one_epoch`, on one
//! device: learning rate from the schedule, forward under the precision's
//! autocast, loss, backward (scaled for fp16), `--accum-freq` with OpenCLIP's
//! feature caching, `--grad-clip-norm`, optimiser step, and the clamp of
//! `logit_scale` to [0, ln 100]. As one rank of several
//! ([`Trainer::with_data_parallel`]), the gradients are averaged over the
//! ranks during backward, as DistributedDataParallel averages them.
//!
//! One thing OpenCLIP does not do: a non-finite loss skips the step (no
//! gradient reaches the weights) and is reported; more than
//! `max_non_finite_in_a_row` such steps in a row stop training with an error,
//! so the last checkpoint written stays the last good one.

use anyhow::{bail, Result};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::data_parallel::DataParallel;
use super::grad_scaler::GradScaler;
use super::optimizer::Optimizer;
use super::schedule::LrSchedule;
use crate::collective::Collective;
use crate::loss::{total_loss, Loss, LossInputs, TeacherInputs};
use crate::model::{CaptionOutput, Clip, ClipOutput};
use crate::shim::AutocastGuard;

/// How the trainer runs each step; from the training flags.
#[derive(Debug, Clone)]
pub struct TrainerSettings {
    pub device: Device,
    /// `--accum-freq`: batches per optimiser step.
    pub accum_freq: usize,
    /// `--grad-clip-norm`.
    pub grad_clip_norm: Option<f64>,
    /// The autocast dtype of `--precision amp` (fp16) or `amp_bf16`.
    pub autocast: Option<Kind>,
    /// The dtype images are cast to (bf16/fp16 for the low-precision modes).
    pub input_kind: Kind,
    /// `--precision amp`: scale the loss with a [`GradScaler`].
    pub grad_scaler: bool,
    /// `--skip-scheduler`: keep the optimiser's learning rate as it is.
    pub skip_scheduler: bool,
    /// `--lock-image-freeze-bn-stats`: the image tower's batch norms use their
    /// running statistics while training.
    pub freeze_image_bn_stats: bool,
    /// Non-finite steps in a row that stop training.
    pub max_non_finite_in_a_row: usize,
}

/// What one optimiser step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The schedule's step index (OpenCLIP's `step`).
    pub step: u64,
    /// The loss of the step's last batch (OpenCLIP logs that one).
    pub loss: f64,
    /// Its terms by OpenCLIP's names, in OpenCLIP's order
    /// (`contrastive_loss`, then `caption_loss` for CoCa); empty when the
    /// step was skipped.
    pub terms: Vec<(&'static str, f64)>,
    /// The learning rate of the first parameter group.
    pub lr: f64,
    /// `exp(logit_scale)` as the forward pass used it.
    pub logit_scale: f64,
    /// The loss was not finite, so the weights were left as they were.
    pub skipped_non_finite: bool,
}

/// The caption predictions every output of a CoCa model has.
fn caption_of(out: &ClipOutput) -> &CaptionOutput {
    out.caption
        .as_ref()
        .expect("every forward pass of a CoCa model has caption outputs")
}

/// A step's total loss and its named terms.
type LossTerms = (Tensor, Vec<(&'static str, Tensor)>);

/// The model, its optimiser and schedule, and the state of an accumulation
/// window.
pub struct Trainer {
    pub vs: VarStore,
    pub model: Clip,
    pub optimizer: Optimizer,
    pub scaler: Option<GradScaler>,
    loss: Box<dyn Loss>,
    schedule: Option<LrSchedule>,
    settings: TrainerSettings,
    /// Batches of the current accumulation window, on the device.
    window: Vec<(Tensor, Tensor)>,
    /// Their outputs from the gradient-free first pass.
    cached: Vec<ClipOutput>,
    non_finite_in_a_row: usize,
    /// `--distill-model`: a frozen teacher run on every batch (its
    /// VarStore kept alive with it).
    teacher: Option<(VarStore, Clip)>,
    /// On several ranks: DDP's work around each step.
    data_parallel: Option<DataParallel>,
}

impl Trainer {
    pub fn new(
        vs: VarStore,
        model: Clip,
        optimizer: Optimizer,
        loss: Box<dyn Loss>,
        schedule: Option<LrSchedule>,
        settings: TrainerSettings,
    ) -> Result<Self> {
        if settings.accum_freq == 0 {
            bail!("--accum-freq must be at least 1");
        }
        let scaler = settings
            .grad_scaler
            .then(|| GradScaler::new(settings.device));
        Ok(Trainer {
            vs,
            model,
            optimizer,
            scaler,
            loss,
            schedule,
            settings,
            window: Vec::new(),
            cached: Vec::new(),
            non_finite_in_a_row: 0,
            teacher: None,
            data_parallel: None,
        })
    }

    /// Distils from `teacher` (its weights frozen here): each batch's loss
    /// also reads the teacher's outputs on it. OpenCLIP runs the teacher in
    /// eval mode, without gradients, under the training autocast. Only with
    /// `--accum-freq 1`, as in OpenCLIP.
    pub fn with_teacher(mut self, vs: VarStore, model: Clip) -> Result<Self> {
        if self.settings.accum_freq != 1 {
            bail!("--distill-model needs --accum-freq 1 (as in OpenCLIP)");
        }
        for (_, mut variable) in vs.variables() {
            let _ = variable.requires_grad_(false);
        }
        self.teacher = Some((vs, model));
        Ok(self)
    }

    /// Trains as one rank of `data_parallel`'s group: gradients averaged
    /// over the ranks as DistributedDataParallel averages them.
    pub fn with_data_parallel(mut self, data_parallel: DataParallel) -> Self {
        self.data_parallel = Some(data_parallel);
        self
    }

    pub fn settings(&self) -> &TrainerSettings {
        &self.settings
    }

    /// Trains on one batch (`images` [N, 3, H, W] f32, `texts` [N, L] token
    /// ids, on any device). `step` is OpenCLIP's schedule step,
    /// `num_batches_per_epoch * epoch + batch_index / accum_freq`. Returns
    /// the step's report when this batch completed an optimiser step.
    pub fn train_batch(
        &mut self,
        step: u64,
        images: &Tensor,
        texts: &Tensor,
    ) -> Result<Option<StepReport>> {
        if let (Some(schedule), false) = (&self.schedule, self.settings.skip_scheduler) {
            self.optimizer.set_lr(schedule.lr_at(step));
        }
        let images = images
            .to_device(self.settings.device)
            .to_kind(self.settings.input_kind);
        let texts = texts.to_device(self.settings.device);

        self.optimizer.zero_grad();
        let (loss, logit_scale) = if self.settings.accum_freq == 1 {
            let out = self.forward(&images, &texts, true)?;
            let teacher_out = self.teacher_forward(&images, &texts)?;
            let (loss, terms) = self.loss_terms(&out, teacher_out.as_ref())?;
            let finite = self.backward(&loss)?;
            (finite.then_some((loss, terms)), out.logit_scale)
        } else {
            let out = tch::no_grad(|| self.forward(&images, &texts, false))?;
            self.cached.push(out);
            self.window.push((images, texts));
            if self.window.len() < self.settings.accum_freq {
                return Ok(None);
            }
            self.accumulated_backward()?
        };
        let report = self.finish_step(step, loss, &logit_scale)?;
        Ok(Some(report))
    }

    /// The model's forward pass in training mode under the precision's
    /// autocast; `with_grad` when its backward will run.
    fn forward(&mut self, images: &Tensor, texts: &Tensor, with_grad: bool) -> Result<ClipOutput> {
        if let Some(data_parallel) = &mut self.data_parallel {
            data_parallel.before_forward(with_grad)?;
        }
        let out = {
            let _autocast = AutocastGuard::when(self.settings.device, self.settings.autocast)?;
            // Frozen batch-norm statistics are what the image tower's eval
            // mode uses; nothing else in a tower that has batch norms
            // (ModifiedResNet) depends on the mode.
            let image_train = !self.settings.freeze_image_bn_stats;
            self.model.forward_t(images, texts, image_train)?
        };
        if let Some(data_parallel) = &mut self.data_parallel {
            data_parallel.after_forward(with_grad)?;
        }
        Ok(out)
    }

    /// The teacher's outputs on the batch, when distilling.
    fn teacher_forward(&self, images: &Tensor, texts: &Tensor) -> Result<Option<ClipOutput>> {
        let Some((_, teacher)) = &self.teacher else {
            return Ok(None);
        };
        let _autocast = AutocastGuard::when(self.settings.device, self.settings.autocast)?;
        tch::no_grad(|| teacher.forward_t(images, texts, false)).map(Some)
    }

    /// OpenCLIP's second pass over an accumulation window: each batch again
    /// with gradients, its fresh outputs (features, and CoCa's caption
    /// logits and labels) put in place of its cached ones among all the
    /// window's, and backward on each loss.
    fn accumulated_backward(&mut self) -> Result<(Option<LossTerms>, Tensor)> {
        self.optimizer.zero_grad();
        let window = std::mem::take(&mut self.window);
        let cached = std::mem::take(&mut self.cached);
        let mut last = None;
        let mut all_finite = true;
        for (j, (images, texts)) in window.iter().enumerate() {
            let out = self.forward(images, texts, true)?;
            // The window's `pick` outputs, batch j's fresh one.
            let with_fresh = |pick: fn(&ClipOutput) -> &Tensor| {
                let parts: Vec<Tensor> = cached
                    .iter()
                    .enumerate()
                    .map(|(k, cached)| pick(if k == j { &out } else { cached }).shallow_clone())
                    .collect();
                Tensor::cat(&parts, 0)
            };
            let caption = out.caption.as_ref().map(|_| CaptionOutput {
                logits: with_fresh(|o| &caption_of(o).logits),
                labels: with_fresh(|o| &caption_of(o).labels),
            });
            let window_out = ClipOutput {
                image_features: with_fresh(|o| &o.image_features),
                text_features: with_fresh(|o| &o.text_features),
                logit_scale: out.logit_scale.shallow_clone(),
                logit_bias: out.logit_bias.as_ref().map(Tensor::shallow_clone),
                caption,
            };
            let (loss, terms) = self.loss_terms(&window_out, None)?;
            all_finite &= self.backward(&loss)?;
            last = Some(((loss, terms), out.logit_scale));
        }
        let (loss, logit_scale) = last.expect("accum_freq >= 1 batches in the window");
        Ok((all_finite.then_some(loss), logit_scale))
    }

    /// The loss of `out` (with the teacher's outputs when distilling): its
    /// sum (OpenCLIP's `total_loss`) and its terms in OpenCLIP's order.
    fn loss_terms(&self, out: &ClipOutput, teacher: Option<&ClipOutput>) -> Result<LossTerms> {
        let inputs = LossInputs {
            teacher: teacher.map(|t| TeacherInputs {
                image_features: &t.image_features,
                text_features: &t.text_features,
                logit_scale: &t.logit_scale,
            }),
            ..LossInputs::from(out)
        };
        Ok(total_loss(self.loss.forward_dict(&inputs)?))
    }

    /// Backward on `loss` (scaled when a scaler is on); false, with no
    /// backward, when the loss is not finite (on any rank).
    fn backward(&mut self, loss: &Tensor) -> Result<bool> {
        let mut finite = loss.isfinite().all().int64_value(&[]) != 0;
        if let Some(data_parallel) = &self.data_parallel {
            finite = data_parallel.all_finite(finite)?;
        }
        if !finite {
            return Ok(false);
        }
        let backward = match &self.scaler {
            Some(scaler) => scaler.scale_loss(loss).f_backward(),
            None => loss.f_backward(),
        };
        if let (Err(error), Some(data_parallel)) = (&backward, &self.data_parallel) {
            anyhow::bail!(
                "the backward pass, whose gradients are all-reduced across {} ranks: {error}",
                data_parallel.group().world_size()
            );
        }
        backward?;
        Ok(true)
    }

    /// The gradients of the trainable parameters (handles sharing their
    /// storage, so scaling them scales the parameters' `.grad`).
    fn gradients(&self) -> Vec<Tensor> {
        self.vs
            .trainable_variables()
            .iter()
            .filter(|param| param.requires_grad())
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect()
    }

    /// Clip, step, scaler update and logit-scale clamp; or the skip of a
    /// non-finite step.
    fn finish_step(
        &mut self,
        step: u64,
        loss: Option<LossTerms>,
        logit_scale: &Tensor,
    ) -> Result<StepReport> {
        let lr = self
            .optimizer
            .groups()
            .first()
            .map_or(0.0, |group| group.lr());
        let logit_scale = logit_scale.double_value(&[]);
        let Some((loss, terms)) = loss else {
            self.optimizer.zero_grad();
            self.non_finite_in_a_row += 1;
            if self.non_finite_in_a_row > self.settings.max_non_finite_in_a_row {
                bail!(
                    "the loss was not finite {} steps in a row (last at step {step}); stopping \
                     (the last checkpoint written is from before this); try a lower --lr, \
                     --grad-clip-norm, or another --precision",
                    self.non_finite_in_a_row
                );
            }
            return Ok(StepReport {
                step,
                loss: f64::NAN,
                terms: Vec::new(),
                lr,
                logit_scale,
                skipped_non_finite: true,
            });
        };
        self.non_finite_in_a_row = 0;
        let mut grads = self.gradients();
        let step_allowed = match &mut self.scaler {
            Some(scaler) => {
                // GradScaler.step unscales when the clip did not.
                scaler.unscale(&mut grads);
                scaler.step_allowed()?
            }
            None => true,
        };
        if let Some(max_norm) = self.settings.grad_clip_norm {
            clip_grad_norm(&mut grads, max_norm);
        }
        if step_allowed {
            self.optimizer.step()?;
        }
        if let Some(scaler) = &mut self.scaler {
            scaler.update()?;
        }
        tch::no_grad(|| {
            let _ = self.model.logit_scale.clamp_(0.0, 100f64.ln());
        });
        Ok(StepReport {
            step,
            loss: loss.double_value(&[]),
            terms: terms
                .iter()
                .map(|(name, term)| (*name, term.double_value(&[])))
                .collect(),
            lr,
            logit_scale,
            skipped_non_finite: false,
        })
    }
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2)`: the
/// 2-norm of all gradients together; when above `max_norm`, every gradient
/// is scaled by `max_norm / (norm + 1e-6)`.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> f64 {
    if grads.is_empty() {
        return 0.0;
    }
    let norms: Vec<Tensor> = grads
        .iter()
        .map(|g| g.norm().to_kind(Kind::Float))
        .collect();
    let total = Tensor::stack(&norms, 0).norm();
    let coefficient = (max_norm / (&total + 1e-6)).clamp_max(1.0);
    for grad in grads.iter_mut() {
        let _ = grad.g_mul_(&coefficient.to_kind(grad.kind()));
    }
    total.double_value(&[])
}
