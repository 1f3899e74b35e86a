//! What OpenCLIP's training loop reports every `--log-every-n-steps` and
//! after each evaluation: the `Train Epoch: ...` and `Eval Epoch: ...` log
//! lines, character for character, and the `train/...` / `val/...` scalars
//! it sends to TensorBoard and wandb, with the same names, order and values.

use super::py_format::{capitalize, fixed, general};

/// OpenCLIP's running mean (its `AverageMeter`): the last value and the mean
/// of all values since the last reset, weighted by `n`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Meter {
    /// The latest value.
    pub last: f64,
    /// Sum of `value * n` since the last reset.
    pub sum: f64,
    /// Sum of `n` since the last reset.
    pub count: u64,
}

impl Meter {
    pub fn update(&mut self, value: f64, n: u64) {
        self.last = value;
        self.sum += value * n as f64;
        self.count += n;
    }

    /// The weighted mean; 0 before the first update, as OpenCLIP's is.
    pub fn average(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum / self.count as f64
        }
    }

    pub fn reset(&mut self) {
        *self = Meter::default();
    }
}

/// One loss term as the training line shows it: its name from the loss's
/// output dict (`contrastive_loss`, `loss`, ...), the value at this log step
/// and the mean over the log steps of the epoch so far.
#[derive(Debug, Clone, PartialEq)]
pub struct LossReading {
    pub name: String,
    pub last: f64,
    pub average: f64,
}

/// The numbers of one training log step, as `train_one_epoch` has them when it
/// logs (after the optimiser step of accumulated batch `batch_count`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainStepReport {
    pub epoch: u64,
    /// The global step: `num_batches_per_epoch * epoch + batch_count - 1`.
    pub step: u64,
    /// Optimiser steps done in this epoch, this one included (1-based).
    pub batch_count: u64,
    /// Batches of the epoch divided by `--accum-freq`.
    pub num_batches_per_epoch: u64,
    /// Samples one epoch holds (the data loader's `num_samples`).
    pub samples_per_epoch: u64,
    /// Rows of the last batch (it may be short).
    pub last_batch_size: u64,
    /// `--batch-size`.
    pub batch_size: u64,
    pub accum_freq: u64,
    pub world_size: u64,
    /// Seconds spent waiting for data, over the steps since the last log.
    pub data_time: Meter,
    /// Seconds per optimiser step, over the steps since the last log.
    pub batch_time: Meter,
    /// The learning rate of the first parameter group.
    pub lr: f64,
    /// The model's logit scale (exp not applied: `logit_scale.item()` of the
    /// forward output, which is already exponentiated).
    pub logit_scale: f64,
    /// In the order of the loss's output dict, `loss` (the total) last.
    pub losses: Vec<LossReading>,
}

impl TrainStepReport {
    /// Samples seen in this epoch, all ranks together.
    pub fn num_samples(&self) -> u64 {
        self.batch_count * self.last_batch_size * self.accum_freq * self.world_size
    }

    pub fn percent_complete(&self) -> f64 {
        100.0 * self.batch_count as f64 / self.num_batches_per_epoch as f64
    }

    /// Throughput of the last optimiser step, all ranks together.
    pub fn samples_per_second(&self) -> f64 {
        (self.accum_freq * self.batch_size * self.world_size) as f64 / self.batch_time.last
    }

    pub fn samples_per_second_per_gpu(&self) -> f64 {
        (self.accum_freq * self.batch_size) as f64 / self.batch_time.last
    }

    /// The `train/...` scalars, in OpenCLIP's order: timings and throughput of
    /// the last step, scale, lr, then each loss's last value.
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let fixed_part = [
            ("data_time", self.data_time.last),
            ("batch_time", self.batch_time.last),
            ("samples_per_second", self.samples_per_second()),
            (
                "samples_per_second_per_gpu",
                self.samples_per_second_per_gpu(),
            ),
            ("scale", self.logit_scale),
            ("lr", self.lr),
        ];
        fixed_part
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .chain(
                self.losses
                    .iter()
                    .map(|loss| (loss.name.clone(), loss.last)),
            )
            .map(|(name, value)| (format!("train/{name}"), value))
            .collect()
    }
}

/// The line `train_one_epoch` logs:
/// `Train Epoch: 0 [ 256/10000 (3%)] Data (t): 0.012 Batch (t): 0.345, 742.029/s, 742.029/s/gpu LR: 0.000050 Logit Scale: 14.286 Contrastive_loss: 4.1589 (4.1589) Loss: 4.1589 (4.1589)`.
pub fn format_train_step_line(report: &TrainStepReport) -> String {
    let digits = sample_digits(report.samples_per_epoch);
    let losses: Vec<String> = report
        .losses
        .iter()
        .map(|loss| {
            format!(
                "{}: {} ({})",
                capitalize(&loss.name),
                general(loss.last, 5, true),
                general(loss.average, 5, true)
            )
        })
        .collect();
    format!(
        "Train Epoch: {} [{:>digits$}/{} ({}%)] Data (t): {} Batch (t): {}, {}/s, {}/s/gpu LR: {} Logit Scale: {} {}",
        report.epoch,
        report.num_samples(),
        report.samples_per_epoch,
        fixed(report.percent_complete(), 0, 0),
        fixed(report.data_time.average(), 3, 0),
        fixed(report.batch_time.average(), 3, 0),
        general(report.samples_per_second(), 6, true),
        general(report.samples_per_second_per_gpu(), 6, true),
        fixed(report.lr, 6, 5),
        fixed(report.logit_scale, 3, 0),
        losses.join(" "),
    )
}

/// The width OpenCLIP pads the sample count to: `ceil(log10(n + 1))`, with the
/// logarithm taken as Python's `math.log(x, 10)` takes it (`ln x / ln 10`).
fn sample_digits(samples_per_epoch: u64) -> usize {
    let digits = ((samples_per_epoch + 1) as f64).ln() / 10f64.ln();
    digits.ceil().max(0.0) as usize
}

/// The line `evaluate` logs every 100 validation batches:
/// `Eval Epoch: 1 [64 / 1000]\tClip Loss: 4.158883\t`.
pub fn format_eval_progress_line(
    epoch: u64,
    num_samples: u64,
    samples_per_val: u64,
    clip_loss: f64,
) -> String {
    format!(
        "Eval Epoch: {epoch} [{num_samples} / {samples_per_val}]\tClip Loss: {}\t",
        fixed(clip_loss, 6, 0)
    )
}

/// The line `evaluate` logs after the progress line for CoCa models:
/// `Generative Loss: 9.123456\t`.
pub fn format_generative_loss_line(generative_loss: f64) -> String {
    format!("Generative Loss: {}\t", fixed(generative_loss, 6, 0))
}

/// The line `evaluate` logs with all metrics, each to 4 decimals, tab
/// separated: `Eval Epoch: 1 image_to_text_mean_rank: 3.5000\t...`.
///
/// Values are rounded as Python floats are (correctly rounded decimal); the
/// retrieval metrics OpenCLIP computes are numpy floats, whose `round` can
/// differ in the last digit when the value sits on a rounding tie.
pub fn format_eval_line(epoch: u64, metrics: &[(String, f64)]) -> String {
    let metrics: Vec<String> = metrics
        .iter()
        .map(|(name, value)| format!("{name}: {}", fixed(*value, 4, 0)))
        .collect();
    format!("Eval Epoch: {epoch} {}", metrics.join("\t"))
}

/// The `val/...` scalars of an evaluation, in the metrics' order.
pub fn eval_scalars(metrics: &[(String, f64)]) -> Vec<(String, f64)> {
    metrics
        .iter()
        .map(|(name, value)| (format!("val/{name}"), *value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_weights_by_count_and_resets() {
        let mut meter = Meter::default();
        assert_eq!(meter.average(), 0.0);
        meter.update(1.0, 1);
        meter.update(4.0, 3);
        assert_eq!((meter.last, meter.average()), (4.0, 13.0 / 4.0));
        meter.reset();
        assert_eq!(meter, Meter::default());
    }

    #[test]
    fn sample_digits_counts_the_digits_of_the_epoch_size() {
        for n in [1u64, 9, 10, 99, 100, 999, 1000, 123_456, 10_000_000] {
            assert_eq!(sample_digits(n), n.to_string().len(), "n = {n}");
        }
    }
}
