//! OpenCLIP's training run folder and checkpoint files, as
//! `open_clip_train.main` lays them out: the default run name, the folders
//! under `--logs/<name>`, `params.txt`, the checkpoint dict, which
//! `epoch_<n>.pt` / `epoch_latest.pt` files are written and deleted after an
//! epoch (`--save-frequency`, `--save-most-recent`,
//! `--delete-previous-checkpoint`), and which file `--resume latest` picks.
//! Also clipflow's checkpoints inside an epoch (`--save-every-n-steps`):
//! `epoch_<e>_step_<s>.pt`, which sorts between `epoch_<e>.pt` and
//! `epoch_<e+1>.pt` in OpenCLIP's natural order, holding the checkpoint dict
//! and the [`DataPosition`] to continue from.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chrono::NaiveDateTime;
use tch::Tensor;

use crate::weights::{write_torch_checkpoint, Value};

/// The file `--save-most-recent` rewrites after every epoch.
pub const LATEST_CHECKPOINT_NAME: &str = "epoch_latest.pt";

/// The paths of one run under `--logs`: `<logs>/<name>/` holding `out.log`,
/// `params.txt`, `checkpoints/` and `tensorboard/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPaths {
    /// `<logs>/<name>`.
    pub run_dir: PathBuf,
    /// `<logs>/<name>/checkpoints`.
    pub checkpoints: PathBuf,
    /// `<logs>/<name>/tensorboard`, made when `--report-to` has tensorboard.
    pub tensorboard: PathBuf,
    /// `<logs>/<name>/params.txt`.
    pub params_txt: PathBuf,
}

impl RunPaths {
    pub fn new(logs: &Path, name: &str) -> RunPaths {
        let run_dir = logs.join(name);
        RunPaths {
            checkpoints: run_dir.join("checkpoints"),
            tensorboard: run_dir.join("tensorboard"),
            params_txt: run_dir.join("params.txt"),
            run_dir,
        }
    }

    /// The text log: `out.log`, or `out-<rank>` with `--log-local`.
    pub fn log_file(&self, log_local: bool, rank: usize) -> PathBuf {
        if log_local {
            self.run_dir.join(format!("out-{rank}"))
        } else {
            self.run_dir.join("out.log")
        }
    }

    /// `checkpoints/results.jsonl`: one JSON line of metrics per evaluation.
    pub fn results_jsonl(&self) -> PathBuf {
        self.checkpoints.join("results.jsonl")
    }

    /// `checkpoints/epoch_<epoch>.pt`.
    pub fn checkpoint(&self, epoch: i64) -> PathBuf {
        self.checkpoints.join(checkpoint_file_name(epoch))
    }

    /// Refuses to start a run whose log file exists, unless it resumes
    /// (`--resume latest`), as OpenCLIP does.
    pub fn check_new_or_resuming(&self, log_file: &Path, resume_latest: bool) -> Result<()> {
        if log_file.exists() && !resume_latest {
            bail!(
                "experiment already exists ({} is there): use --name to give a new experiment \
                 name, or --resume latest to continue this one",
                log_file.display()
            );
        }
        Ok(())
    }

    /// Makes the run folder, `checkpoints/` and, if asked, `tensorboard/`.
    pub fn create_dirs(&self, tensorboard: bool) -> Result<()> {
        let mut dirs = vec![&self.run_dir, &self.checkpoints];
        if tensorboard {
            dirs.push(&self.tensorboard);
        }
        for dir in dirs {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// The checkpoint `--resume latest` continues from, if any.
    pub fn resume_latest(&self, save_most_recent: bool) -> Option<PathBuf> {
        resume_latest(&self.checkpoints, save_most_recent)
    }
}

/// The flags OpenCLIP's default run name is made of.
#[derive(Clone, Debug)]
pub struct RunNameFields<'a> {
    pub model: &'a str,
    pub lr: f64,
    pub batch_size: i64,
    pub workers: i64,
    pub precision: &'a str,
}

/// The run name OpenCLIP makes when `--name` is not given, such as
/// `2024_05_01-13_45_00-model_ViT-B-32-lr_0.0005-b_64-j_4-p_amp`: the local
/// time `now`, then the model (with `/` made `-`), learning rate (as Python
/// prints a float), batch size, workers and precision.
pub fn default_run_name(fields: &RunNameFields, now: NaiveDateTime) -> String {
    format!(
        "{}-model_{}-lr_{}-b_{}-j_{}-p_{}",
        now.format("%Y_%m_%d-%H_%M_%S"),
        fields.model.replace('/', "-"),
        python_float(fields.lr),
        fields.batch_size,
        fields.workers,
        fields.precision
    )
}

/// The local time, as OpenCLIP's `datetime.now()` gives it for the run name.
pub fn local_now() -> NaiveDateTime {
    chrono::Local::now().naive_local()
}

/// `str(x)` of a Python float: the shortest text that reads back as `x`,
/// in positional notation for exponents from -4 to 15 (with `.0` when
/// whole) and as `1.5e-05` / `1e+16` beyond.
pub fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e-5".
    let scientific = format!("{:e}", x.abs());
    let (mantissa, exponent) = scientific
        .split_once('e')
        .expect("`{:e}` always has an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` exponent is an integer");
    let digits = mantissa.replace('.', "");
    let sign = if x.is_sign_negative() { "-" } else { "" };
    // Python's rule: positional when the decimal point falls within
    // (-4, 16] places of the first digit.
    let point = exponent + 1;
    let body = if point <= -4 || point > 16 {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        format!("{first}{fraction}e{exponent_sign}{:02}", exponent.abs())
    } else if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        let (whole, fraction) = digits.split_at(point as usize);
        format!("{whole}.{fraction}")
    };
    format!("{sign}{body}")
}

/// `epoch_<epoch>.pt`.
pub fn checkpoint_file_name(epoch: i64) -> String {
    format!("epoch_{epoch}.pt")
}

/// `epoch_<completed epochs>_step_<optimiser steps>.pt`: a checkpoint
/// inside an epoch.
pub fn step_checkpoint_file_name(completed_epochs: u64, steps: u64) -> String {
    format!("epoch_{completed_epochs}_step_{steps}.pt")
}

/// Where the data stream of a run stood when a checkpoint was saved inside
/// an epoch: enough to continue it exactly (the stream is a function of the
/// data, the seed and the epoch, so its position is all the state it has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPosition {
    /// The epoch being trained, from 0.
    pub epoch: u64,
    /// The place in that epoch's stream the next batch starts at.
    pub place: u64,
    /// The loader batches of the epoch already trained on.
    pub batches: u64,
    /// Optimiser steps done in the run.
    pub steps: u64,
}

impl DataPosition {
    /// As stored in the checkpoint, under `data_position`.
    pub fn to_value(&self) -> Value {
        let entry = |key: &str, n: u64| (Value::Str(key.into()), Value::Int(n as i64));
        Value::Dict(vec![
            entry("epoch", self.epoch),
            entry("place", self.place),
            entry("batches", self.batches),
            entry("steps", self.steps),
        ])
    }

    /// Reads what [`to_value`](Self::to_value) stored.
    pub fn from_value(value: &Value) -> Result<DataPosition> {
        let field = |key: &str| -> Result<u64> {
            match value.get(key) {
                Some(Value::Int(n)) if *n >= 0 => Ok(*n as u64),
                _ => bail!("data_position has no whole number `{key}`"),
            }
        };
        Ok(DataPosition {
            epoch: field("epoch")?,
            place: field("place")?,
            batches: field("batches")?,
            steps: field("steps")?,
        })
    }
}

/// OpenCLIP's training checkpoint: `{"epoch", "name", "state_dict",
/// "optimizer"}` and `"scaler"` when training with a gradient scaler, in that
/// order. `epoch` is the number of epochs completed; the state dict becomes an
/// ordered dict of its tensors.
pub fn checkpoint_dict(
    epoch: i64,
    name: &str,
    state_dict: &[(String, Tensor)],
    optimizer: Value,
    scaler: Option<Value>,
) -> Value {
    let mut items = vec![
        (Value::Str("epoch".into()), Value::Int(epoch)),
        (Value::Str("name".into()), Value::Str(name.into())),
        (
            Value::Str("state_dict".into()),
            Value::state_dict(state_dict),
        ),
        (Value::Str("optimizer".into()), optimizer),
    ];
    if let Some(scaler) = scaler {
        items.push((Value::Str("scaler".into()), scaler));
    }
    Value::Dict(items)
}

/// [`checkpoint_dict`]'s entries, then `data_position`: a checkpoint saved
/// inside an epoch. `epoch` stays the number of completed epochs, so
/// OpenCLIP resuming from it restarts the epoch, and loads its weights.
pub fn step_checkpoint_dict(checkpoint: Value, position: &DataPosition) -> Value {
    match checkpoint {
        Value::Dict(mut items) => {
            items.push((Value::Str("data_position".into()), position.to_value()));
            Value::Dict(items)
        }
        other => other,
    }
}

/// What happens to the checkpoints folder after an epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointAction {
    /// Write the checkpoint to this file name (atomically).
    Write(String),
    /// Delete this file if it exists.
    RemoveIfPresent(String),
}

/// The checkpoint flags: `--save-frequency`, `--save-most-recent`,
/// `--delete-previous-checkpoint`.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointPolicy {
    /// Save `epoch_<n>.pt` every this many epochs; 0 or less only at the end.
    pub save_frequency: i64,
    /// Also rewrite `epoch_latest.pt` after every epoch.
    pub save_most_recent: bool,
    /// Delete `epoch_<n-1>.pt` after epoch `n`.
    pub delete_previous: bool,
}

impl CheckpointPolicy {
    /// The actions after `completed_epoch` of `epochs`, in OpenCLIP's order:
    /// `epoch_<n>.pt` when `n` is the last epoch or a multiple of the save
    /// frequency; then, with delete-previous, removal of `epoch_<n-1>.pt`
    /// (whether or not `epoch_<n>.pt` was written, as OpenCLIP does); then
    /// `epoch_latest.pt` with save-most-recent.
    pub fn actions_after_epoch(&self, completed_epoch: i64, epochs: i64) -> Vec<CheckpointAction> {
        let mut actions = Vec::new();
        let due = completed_epoch == epochs
            || (self.save_frequency > 0 && completed_epoch % self.save_frequency == 0);
        if due {
            actions.push(CheckpointAction::Write(checkpoint_file_name(
                completed_epoch,
            )));
        }
        if self.delete_previous {
            actions.push(CheckpointAction::RemoveIfPresent(checkpoint_file_name(
                completed_epoch - 1,
            )));
        }
        if self.save_most_recent {
            actions.push(CheckpointAction::Write(LATEST_CHECKPOINT_NAME.into()));
        }
        actions
    }

    /// The actions of a checkpoint inside an epoch at `position`:
    /// `epoch_<e>_step_<s>.pt`; then, with delete-previous, removal of the
    /// step checkpoint written before it (`previous_step_file`); then
    /// `epoch_latest.pt` with save-most-recent.
    pub fn actions_inside_epoch(
        &self,
        position: &DataPosition,
        previous_step_file: Option<&str>,
    ) -> Vec<CheckpointAction> {
        let mut actions = vec![CheckpointAction::Write(step_checkpoint_file_name(
            position.epoch,
            position.steps,
        ))];
        if let (true, Some(previous)) = (self.delete_previous, previous_step_file) {
            actions.push(CheckpointAction::RemoveIfPresent(previous.into()));
        }
        if self.save_most_recent {
            actions.push(CheckpointAction::Write(LATEST_CHECKPOINT_NAME.into()));
        }
        actions
    }

    /// Carries out `actions` in `checkpoints_dir`, writing `checkpoint`.
    pub fn carry_out(
        &self,
        checkpoints_dir: &Path,
        actions: &[CheckpointAction],
        checkpoint: &Value,
    ) -> Result<()> {
        for action in actions {
            match action {
                CheckpointAction::Write(file) => {
                    write_torch_checkpoint(&checkpoints_dir.join(file), checkpoint)?
                }
                CheckpointAction::RemoveIfPresent(file) => {
                    let path = checkpoints_dir.join(file);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                        Err(error) => {
                            return Err(error)
                                .with_context(|| format!("removing {}", path.display()))
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Carries out [`CheckpointPolicy::actions_after_epoch`] in
    /// `checkpoints_dir`, writing `checkpoint` (see [`checkpoint_dict`]).
    pub fn save_after_epoch(
        &self,
        checkpoints_dir: &Path,
        completed_epoch: i64,
        epochs: i64,
        checkpoint: &Value,
    ) -> Result<()> {
        let actions = self.actions_after_epoch(completed_epoch, epochs);
        self.carry_out(checkpoints_dir, &actions, checkpoint)
    }
}

/// The checkpoint `--resume latest` continues from: with
/// `--save-most-recent`, `epoch_latest.pt` if it exists; otherwise
/// [`latest_checkpoint`].
pub fn resume_latest(checkpoints_dir: &Path, save_most_recent: bool) -> Option<PathBuf> {
    if save_most_recent {
        let latest = checkpoints_dir.join(LATEST_CHECKPOINT_NAME);
        latest.exists().then_some(latest)
    } else {
        latest_checkpoint(checkpoints_dir)
    }
}

/// The newest checkpoint as OpenCLIP finds it: of the `*.pt` files (not
/// hidden) in `checkpoints_dir` — and, because OpenCLIP globs
/// `<dir>**/*.pt`, in any sibling folder whose name starts with the
/// folder's name, such as `checkpoints_old` — the last in [`natural_key`]
/// order of their full paths. No subfolders are searched.
pub fn latest_checkpoint(checkpoints_dir: &Path) -> Option<PathBuf> {
    let dir_name = checkpoints_dir.file_name()?.to_str()?;
    let parent = match checkpoints_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let folders = visible_entries(parent)
        .filter(|(name, _)| name.starts_with(dir_name))
        .map(|(_, path)| path);
    folders
        .flat_map(|folder| visible_entries(&folder).collect::<Vec<_>>())
        .filter(|(name, _)| name.ends_with(".pt"))
        .map(|(_, path)| path)
        .max_by(|a, b| natural_key(&a.to_string_lossy()).cmp(&natural_key(&b.to_string_lossy())))
}

/// The entries of `dir` whose names do not start with `.`, with their paths;
/// nothing when `dir` cannot be read, as Python's glob.
fn visible_entries(dir: &Path) -> impl Iterator<Item = (String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            (!name.starts_with('.')).then(|| (name, entry.path()))
        })
}

/// One run of a [`natural_key`]: text, or the value of a run of digits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NaturalPart {
    Text(String),
    /// Decimal digits without leading zeros, compared by value.
    Number(String),
}

impl Ord for NaturalPart {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (NaturalPart::Text(a), NaturalPart::Text(b)) => a.cmp(b),
            (NaturalPart::Number(a), NaturalPart::Number(b)) => {
                a.len().cmp(&b.len()).then_with(|| a.cmp(b))
            }
            // Keys alternate text and number from a text start, so parts at
            // the same position are of the same kind; text first otherwise.
            (NaturalPart::Text(_), NaturalPart::Number(_)) => Ordering::Less,
            (NaturalPart::Number(_), NaturalPart::Text(_)) => Ordering::Greater,
        }
    }
}

impl PartialOrd for NaturalPart {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// OpenCLIP's `natural_key`: the lowercased text split into runs of ASCII
/// digits (compared as numbers) and the text between them (compared as
/// text), starting with a text run (empty when the text starts with a
/// digit), so `epoch_10.pt` sorts after `epoch_9.pt`. Python also counts
/// other scripts' decimal digits as digits; here they are text.
pub fn natural_key(text: &str) -> Vec<NaturalPart> {
    let lower = text.to_lowercase();
    let mut parts = Vec::new();
    let mut rest = lower.as_str();
    loop {
        let digits_start = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        parts.push(NaturalPart::Text(rest[..digits_start].to_owned()));
        rest = &rest[digits_start..];
        if rest.is_empty() {
            return parts;
        }
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let value = rest[..digits_end].trim_start_matches('0');
        parts.push(NaturalPart::Number(value.to_owned()));
        rest = &rest[digits_end..];
    }
}

/// Writes `params.txt` as OpenCLIP does: one `name: value` line per
/// parameter, sorted by name. Values are the text Python's `str` gives them
/// (see [`python_float`] for floats).
pub fn write_params_txt(path: &Path, params: &[(String, String)]) -> Result<()> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut text = String::new();
    for (name, value) in sorted {
        text.push_str(&format!("{name}: {value}\n"));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
