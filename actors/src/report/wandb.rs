//! `--report-to wandb` through the official wandb SDK, run in a Python
//! sidecar process (`wandb_sidecar.py`, embedded in the binary): clipflow
//! sends it JSON lines (init, log, finish) on stdin and it answers init and
//! finish on stdout. The run is initialised as OpenCLIP's main initialises
//! it (project, name and id from the run name, notes, no tags, `resume="auto"`
//! with `--resume latest`, the arguments as config, params.txt saved), and
//! metrics are logged with OpenCLIP's step semantics ([`WandbSidecar::log_train`],
//! [`WandbSidecar::log_eval`]). A sidecar that dies is reported as an error
//! with its reason, never waited on forever.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::py_format::{json_float, json_object, json_string, PyValue};

const SIDECAR_SCRIPT: &str = include_str!("wandb_sidecar.py");
/// How long a sidecar whose input is closed gets to finish before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(30);

/// What `wandb.init` gets, as OpenCLIP's main passes it.
#[derive(Debug, Clone)]
pub struct WandbInit {
    /// `--wandb-project-name`.
    pub project: String,
    /// The run name (`--name` or the generated one); also the run id.
    pub name: String,
    /// `--wandb-notes`.
    pub notes: String,
    /// `--resume latest` resumes the wandb run (`resume="auto"`).
    pub resume_latest: bool,
    /// All arguments (`vars(args)`).
    pub config: Vec<(String, PyValue)>,
    /// Files to `wandb.save` (OpenCLIP saves params.txt).
    pub save: Vec<PathBuf>,
}

/// A running sidecar with an initialised wandb run.
pub struct WandbSidecar {
    child: Child,
    input: Option<ChildStdin>,
    replies: Receiver<Reply>,
}

/// A line the sidecar wrote, or the end of its output.
enum Reply {
    Ok(String),
    Error(String),
    Closed,
}

impl WandbSidecar {
    /// Starts the sidecar with the Python of `$CLIPFLOW_VENV` (else
    /// `python3` on PATH) and waits until `wandb.init` returned.
    pub fn start(init: &WandbInit) -> Result<Self> {
        Self::start_with(&python_interpreter(), init)
    }

    /// As [`WandbSidecar::start`], with the given Python interpreter.
    pub fn start_with(python: &Path, init: &WandbInit) -> Result<Self> {
        let mut child = Command::new(python)
            .arg("-c")
            .arg(SIDECAR_SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "starting the wandb sidecar with {} (--report-to wandb needs Python with wandb: pip install wandb)",
                    python.display()
                )
            })?;
        let output = child.stdout.take().expect("stdout is piped");
        let (send, replies) = crossbeam_channel::unbounded();
        std::thread::Builder::new()
            .name("wandb-sidecar".into())
            .spawn(move || {
                for line in BufReader::new(output).lines() {
                    let Ok(line) = line else { break };
                    if send.send(parse_reply(&line)).is_err() {
                        return;
                    }
                }
                let _ = send.send(Reply::Closed);
            })
            .context("starting the wandb sidecar's reader thread")?;
        let mut sidecar = WandbSidecar {
            input: child.stdin.take(),
            child,
            replies,
        };
        let save: Vec<PyValue> = init
            .save
            .iter()
            .map(|path| PyValue::Str(path.display().to_string()))
            .collect();
        let config = PyValue::Dict(init.config.clone());
        let command = json_object(
            [
                ("op", json_string("init")),
                ("project", json_string(&init.project)),
                ("name", json_string(&init.name)),
                ("id", json_string(&init.name)),
                ("notes", json_string(&init.notes)),
                ("tags", "[]".to_string()),
                ("resume", resume_json(init.resume_latest)),
                ("config", config.to_json()),
                ("save", PyValue::List(save).to_json()),
            ]
            .into_iter(),
        );
        sidecar.send("init", &command)?;
        sidecar.await_ok("init")?;
        Ok(sidecar)
    }

    /// `wandb.log(metrics, step=step)`.
    pub fn log(&mut self, step: Option<u64>, metrics: &[(String, f64)]) -> Result<()> {
        self.log_with_counters(step, metrics, &[])
    }

    /// A training log step as OpenCLIP logs it: the `train/...` scalars plus
    /// `step` (an integer), at `step`.
    pub fn log_train(&mut self, step: u64, scalars: &[(String, f64)]) -> Result<()> {
        self.log_with_counters(Some(step), scalars, &[("step", step)])
    }

    /// An evaluation as OpenCLIP logs it: the `val/...` scalars plus `epoch`
    /// (an integer), at step `num_batches_per_epoch * epoch`, or at wandb's
    /// own next step when there is no training data (`None`).
    pub fn log_eval(
        &mut self,
        epoch: u64,
        step: Option<u64>,
        scalars: &[(String, f64)],
    ) -> Result<()> {
        self.log_with_counters(step, scalars, &[("epoch", epoch)])
    }

    /// `wandb.finish()`, then waits for the sidecar to exit.
    pub fn finish(mut self) -> Result<()> {
        self.send(
            "finish",
            &json_object([("op", json_string("finish"))].into_iter()),
        )?;
        self.await_ok("finish")?;
        self.input = None;
        let status = self.child.wait().context("waiting for the wandb sidecar")?;
        if !status.success() {
            bail!("the wandb sidecar exited with {status} after wandb.finish");
        }
        Ok(())
    }

    fn log_with_counters(
        &mut self,
        step: Option<u64>,
        metrics: &[(String, f64)],
        counters: &[(&str, u64)],
    ) -> Result<()> {
        self.check_for_error()?;
        let data = json_object(
            metrics
                .iter()
                .map(|(name, value)| (name.as_str(), json_float(*value)))
                .chain(
                    counters
                        .iter()
                        .map(|(name, value)| (*name, value.to_string())),
                ),
        );
        let step = step.map_or("null".to_string(), |step| step.to_string());
        let command =
            json_object([("op", json_string("log")), ("data", data), ("step", step)].into_iter());
        self.send("log", &command)
    }

    /// Sends one command line for `op`; a sidecar gone by then is reported.
    fn send(&mut self, op: &str, command: &str) -> Result<()> {
        let input = self
            .input
            .as_mut()
            .ok_or_else(|| anyhow!("the wandb sidecar's input is closed"))?;
        let sent = input
            .write_all(command.as_bytes())
            .and_then(|()| input.write_all(b"\n"))
            .and_then(|()| input.flush());
        if sent.is_err() {
            return Err(self.death_report(&format!("during wandb.{op}")));
        }
        Ok(())
    }

    /// Fails with the sidecar's own error if it reported one or exited.
    fn check_for_error(&mut self) -> Result<()> {
        match self.replies.try_recv() {
            Ok(Reply::Error(message)) => bail!("wandb sidecar: {message}"),
            Ok(Reply::Closed) => Err(self.death_report("during wandb.log")),
            Ok(Reply::Ok(op)) => bail!("the wandb sidecar answered an unexpected {op:?}"),
            Err(_) => Ok(()),
        }
    }

    fn await_ok(&mut self, op: &str) -> Result<()> {
        match self.replies.recv() {
            Ok(Reply::Ok(answered)) if answered == op => Ok(()),
            Ok(Reply::Ok(answered)) => {
                bail!("the wandb sidecar answered {answered:?} to {op:?}")
            }
            Ok(Reply::Error(message)) => bail!("wandb sidecar: {message}"),
            Ok(Reply::Closed) | Err(_) => Err(self.death_report(&format!("during wandb.{op}"))),
        }
    }

    /// The sidecar stopped: its own error message if it wrote one before
    /// exiting, else its exit status.
    fn death_report(&mut self, when: &str) -> anyhow::Error {
        self.input = None;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.replies.recv_deadline(deadline) {
                Ok(Reply::Error(message)) => return anyhow!("wandb sidecar: {message}"),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status.to_string(),
            _ => "no exit status yet".to_string(),
        };
        anyhow!("the wandb sidecar stopped {when} ({status}); wandb's own messages are above")
    }
}

impl Drop for WandbSidecar {
    /// Without `finish`, closing the sidecar's input finishes the wandb run
    /// as failed; a sidecar that does not exit in time is killed.
    fn drop(&mut self) {
        if self.input.take().is_none() && self.child.try_wait().is_ok_and(|s| s.is_some()) {
            return;
        }
        let deadline = Instant::now() + EXIT_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_reply(line: &str) -> Reply {
    let fields: std::collections::HashMap<String, String> = match serde_json::from_str(line) {
        Ok(fields) => fields,
        Err(_) => return Reply::Error(format!("unreadable reply {line:?}")),
    };
    match (fields.get("ok"), fields.get("error")) {
        (_, Some(message)) => Reply::Error(message.clone()),
        (Some(op), None) => Reply::Ok(op.clone()),
        (None, None) => Reply::Error(format!("unreadable reply {line:?}")),
    }
}

fn resume_json(resume_latest: bool) -> String {
    if resume_latest {
        json_string("auto")
    } else {
        "null".to_string()
    }
}

/// `$CLIPFLOW_VENV/bin/python` when that exists, else `python3` on PATH.
fn python_interpreter() -> PathBuf {
    std::env::var_os("CLIPFLOW_VENV")
        .map(|venv| Path::new(&venv).join("bin").join("python"))
        .filter(|python| python.exists())
        .unwrap_or_else(|| PathBuf::from("python3"))
}
