//! The training logger, the last stage of a training graph: it writes what
//! OpenCLIP's `train_one_epoch` and `evaluate` report, in their formats:
//! the `Train Epoch: ...` line every `--log-every-n-steps` steps and at the
//! end of the epoch (out.log and the terminal, with a progress line and ETA
//! on a terminal), `train/...` TensorBoard scalars and wandb metrics at each
//! logged step, and the `Eval Epoch: ...` line with `val/...` scalars and a
//! line of `checkpoints/results.jsonl` after an evaluation.
//!
//! Its state (the log file, the TensorBoard and wandb writers, the running
//! means of an epoch) outlives one epoch's graph in a [`SharedTrainLog`].

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::{Context, Result};

use crate::report::{
    eval_scalars, format_eval_line, format_eval_progress_line, format_generative_loss_line,
    format_train_step_line, write_params_txt, Level, LossReading, Meter, ProgressLine, PyValue,
    RunLog, TensorboardWriter, TrainStepReport, WandbInit, WandbSidecar,
};
use crate::runtime::{Emitter, Stage, WorkerInfo};
use crate::train_events::{EvalProgress, StepEvent, TrainEvent};

/// Where and how a run logs.
pub struct TrainLogConfig {
    /// `out.log` (`None` with `--logs none`).
    pub log_file: Option<PathBuf>,
    /// `--debug`: DEBUG records too.
    pub debug: bool,
    /// params.txt and its `name: value` lines (Python's `str` of each value).
    pub params_txt: Option<PathBuf>,
    pub params: Vec<(String, String)>,
    /// `<run>/tensorboard` with `--report-to tensorboard`.
    pub tensorboard_dir: Option<PathBuf>,
    /// `<run>/checkpoints/results.jsonl` (`None` with `--logs none`).
    pub results_jsonl: Option<PathBuf>,
    /// `--report-to wandb`.
    pub wandb: Option<WandbInit>,
    pub log_every_n_steps: u64,
    pub batch_size: u64,
    pub accum_freq: u64,
    pub world_size: u64,
    /// What a rank of a distributed run logs first, as OpenCLIP's ranks
    /// do (which rank on which device, of how many).
    pub launch_line: Option<String>,
    /// A rank other than 0: after the launch line, only warnings and errors
    /// reach its terminal and its log file, if it keeps one (OpenCLIP logs
    /// training from rank 0).
    pub quiet: bool,
}

/// The run's logs and the running means of the current epoch.
pub struct TrainLog {
    run_log: RunLog,
    tensorboard: Option<TensorboardWriter>,
    wandb: Option<WandbSidecar>,
    config: TrainLogConfig,
    /// The epoch the meters belong to.
    epoch: Option<u64>,
    data_time: Meter,
    batch_time: Meter,
    /// A meter per loss term, in OpenCLIP's order, then the total (`loss`).
    losses_m: Vec<(String, Meter)>,
    /// Steps per epoch of the last step seen (for evaluation's wandb step).
    steps_per_epoch: Option<u64>,
    /// (step, loss) of every logged step, for plots and summaries.
    losses: Vec<(u64, f64)>,
    /// (completed epoch, metrics) of every evaluation.
    evaluations: Vec<(u64, Vec<(String, f64)>)>,
}

/// The [`TrainLog`] shared by the logger stages of successive epochs and the
/// program running them.
#[derive(Clone)]
pub struct SharedTrainLog(Arc<Mutex<TrainLog>>);

impl SharedTrainLog {
    /// Opens out.log, writes params.txt (logging each parameter, as
    /// OpenCLIP does), and starts TensorBoard and wandb when asked.
    pub fn open(config: TrainLogConfig) -> Result<Self> {
        let mut run_log = RunLog::open(config.log_file.as_deref(), config.debug)?;
        if let Some(line) = &config.launch_line {
            run_log.info(line)?;
        }
        if config.quiet {
            run_log = run_log.warnings_only();
        }
        if let Some(path) = &config.params_txt {
            run_log.info("Params:")?;
            for line in write_params_txt(path, &config.params)? {
                run_log.info(&format!("  {line}"))?;
            }
        }
        let tensorboard = match &config.tensorboard_dir {
            Some(dir) => Some(TensorboardWriter::create(dir)?),
            None => None,
        };
        let wandb = match &config.wandb {
            Some(init) => Some(WandbSidecar::start(init)?),
            None => None,
        };
        Ok(SharedTrainLog(Arc::new(Mutex::new(TrainLog {
            run_log,
            tensorboard,
            wandb,
            config,
            epoch: None,
            data_time: Meter::default(),
            batch_time: Meter::default(),
            losses_m: Vec::new(),
            steps_per_epoch: None,
            losses: Vec::new(),
            evaluations: Vec::new(),
        }))))
    }

    /// The log; a stage that panicked while holding it leaves it usable.
    pub fn lock(&self) -> MutexGuard<'_, TrainLog> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TrainLog {
    /// An INFO record in out.log and on the terminal. A log that cannot be
    /// written is reported on stderr, not fatal.
    pub fn info(&self, message: &str) {
        if let Err(error) = self.run_log.info(message) {
            eprintln!("clipflow: writing the log: {error:#}");
        }
    }

    /// A WARNING record in out.log and on the terminal (every rank's).
    pub fn warning(&self, message: &str) {
        if let Err(error) = self.run_log.log(Level::Warning, message) {
            eprintln!("clipflow: writing the log: {error:#}");
        }
    }

    /// Records one optimiser step; logs it when it is a logging step.
    pub fn step(&mut self, event: &StepEvent) -> Result<()> {
        if self.epoch != Some(event.plan.epoch) {
            self.epoch = Some(event.plan.epoch);
            self.losses_m.clear();
            self.data_time.reset();
            self.batch_time.reset();
            self.run_log.attach_progress(ProgressLine::start(
                &format!("epoch {}", event.plan.epoch),
                event.plan.steps_per_epoch,
            ));
        }
        self.steps_per_epoch = Some(event.plan.steps_per_epoch);
        self.data_time.update(event.data_time.as_secs_f64(), 1);
        self.batch_time.update(event.batch_time.as_secs_f64(), 1);
        let batch_count = event.steps_done;
        let last_of_epoch = batch_count == event.plan.steps_per_epoch;
        if (batch_count - 1) % self.config.log_every_n_steps.max(1) != 0 && !last_of_epoch {
            return Ok(());
        }
        let report = &event.report;
        if !report.skipped_non_finite {
            let readings = report.terms.iter().copied().chain([("loss", report.loss)]);
            for (name, value) in readings {
                let meter = match self.losses_m.iter().position(|(n, _)| n == name) {
                    Some(i) => &mut self.losses_m[i].1,
                    None => {
                        self.losses_m.push((name.to_owned(), Meter::default()));
                        &mut self.losses_m.last_mut().expect("just pushed").1
                    }
                };
                meter.update(value, event.batch_size as u64);
            }
            self.losses.push((report.step, report.loss));
        } else {
            self.run_log.warning(&format!(
                "step {}: the loss was not finite; the step was skipped",
                report.step
            ))?;
        }
        let line_report = TrainStepReport {
            epoch: event.plan.epoch,
            step: report.step,
            batch_count,
            num_batches_per_epoch: event.plan.steps_per_epoch,
            samples_per_epoch: event.plan.samples_per_epoch,
            last_batch_size: event.batch_size as u64,
            batch_size: self.config.batch_size,
            accum_freq: self.config.accum_freq,
            world_size: self.config.world_size,
            data_time: self.data_time,
            batch_time: self.batch_time,
            lr: report.lr,
            logit_scale: report.logit_scale,
            losses: self
                .losses_m
                .iter()
                .map(|(name, meter)| LossReading {
                    name: name.clone(),
                    last: meter.last,
                    average: meter.average(),
                })
                .collect(),
        };
        // TensorBoard's points are flushed before the step's out.log line,
        // so that a run stopped right after a line (a kill, a preemption)
        // has the step's scalars too.
        let scalars = line_report.scalars();
        if let Some(tensorboard) = &mut self.tensorboard {
            tensorboard.add_scalars(report.step as i64, &scalars)?;
        }
        self.run_log.info(&format_train_step_line(&line_report))?;
        if let Some(wandb) = &mut self.wandb {
            wandb.log_train(report.step, &scalars)?;
        }
        // OpenCLIP resets the time meters after each log line.
        self.data_time.reset();
        self.batch_time.reset();
        if last_of_epoch {
            self.run_log.attach_progress(None);
        }
        Ok(())
    }

    /// Logs the validation pass's running loss (OpenCLIP's progress line).
    pub fn evaluation_progress(&mut self, progress: &EvalProgress) -> Result<()> {
        self.run_log.info(&format_eval_progress_line(
            progress.epoch,
            progress.num_samples,
            progress.samples_per_val,
            progress.clip_loss,
        ))?;
        if let Some(generative) = progress.generative_loss {
            self.run_log
                .info(&format_generative_loss_line(generative))?;
        }
        Ok(())
    }

    /// Logs an evaluation's metrics after `completed_epoch` epochs.
    pub fn evaluation(&mut self, completed_epoch: u64, metrics: &[(String, f64)]) -> Result<()> {
        if metrics.is_empty() {
            return Ok(());
        }
        self.evaluations.push((completed_epoch, metrics.to_vec()));
        self.run_log
            .info(&format_eval_line(completed_epoch, metrics))?;
        if let Some(path) = &self.config.results_jsonl {
            append_results_line(path, metrics)?;
        }
        let scalars = eval_scalars(metrics);
        if let Some(tensorboard) = &mut self.tensorboard {
            tensorboard.add_scalars(completed_epoch as i64, &scalars)?;
        }
        if let Some(wandb) = &mut self.wandb {
            let step = self.steps_per_epoch.map(|steps| steps * completed_epoch);
            wandb.log_eval(completed_epoch, step, &scalars)?;
        }
        Ok(())
    }

    /// (step, loss) of every logged training step so far.
    pub fn losses(&self) -> &[(u64, f64)] {
        &self.losses
    }

    /// (completed epoch, metrics) of every evaluation so far.
    pub fn evaluations(&self) -> &[(u64, Vec<(String, f64)>)] {
        &self.evaluations
    }

    /// Closes wandb (`wandb.finish()`); the files are already flushed.
    pub fn finish(&mut self) -> Result<()> {
        self.run_log.attach_progress(None);
        match self.wandb.take() {
            Some(wandb) => wandb.finish(),
            None => Ok(()),
        }
    }
}

/// Appends `metrics` to results.jsonl as OpenCLIP's `json.dumps(metrics)`
/// writes them (`epoch` and `num_samples` are Python ints there).
fn append_results_line(path: &Path, metrics: &[(String, f64)]) -> Result<()> {
    let entries = metrics
        .iter()
        .map(|(name, value)| {
            let value = match name.as_str() {
                "epoch" | "num_samples" => PyValue::Int(*value as i64),
                _ => PyValue::Float(*value),
            };
            (name.clone(), value)
        })
        .collect();
    let line = format!("{}\n", PyValue::Dict(entries).to_json());
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(line.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Hands each event to the shared [`TrainLog`].
pub struct TrainLogger {
    log: SharedTrainLog,
}

impl TrainLogger {
    pub fn maker(log: SharedTrainLog) -> impl Fn(WorkerInfo) -> Result<TrainLogger> {
        move |worker| {
            anyhow::ensure!(
                worker.count == 1,
                "a train logger runs as one worker (parallelism = 1), not {}",
                worker.count
            );
            Ok(TrainLogger { log: log.clone() })
        }
    }
}

impl Stage for TrainLogger {
    type In = TrainEvent;
    type Out = ();

    fn process(&mut self, event: TrainEvent, _out: &mut Emitter<()>) -> Result<()> {
        let mut log = self.log.lock();
        match event {
            TrainEvent::EpochStart(plan) => {
                log.info(&format!("Start epoch {}", plan.epoch));
                Ok(())
            }
            TrainEvent::Step(step) => log.step(&step),
            TrainEvent::EvaluationProgress(progress) => log.evaluation_progress(&progress),
            TrainEvent::Evaluation {
                completed_epoch,
                metrics,
            } => log.evaluation(completed_epoch, &metrics),
            TrainEvent::MidEpoch(_) | TrainEvent::EpochEnd(_) => Ok(()),
        }
    }
}
