//! The run's text log, as OpenCLIP's `setup_logging` configures Python's
//! logging: every record as `<local time %Y-%m-%d,%H:%M:%S> | <LEVEL> | <message>`
//! on stderr and, on the rank that keeps logs, appended to `out.log`
//! (`out-<rank>` with `--log-local`); DEBUG records only with `--debug`.
//!
//! A plain writer rather than a `tracing` subscriber: the format must match
//! Python's byte for byte, records carry no structured fields, and the
//! terminal copy has to be interleaved with the progress line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result};

use super::ProgressLine;

/// Python's logging levels that OpenCLIP uses, least severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

impl Level {
    /// The name Python's `%(levelname)s` prints.
    pub fn name(self) -> &'static str {
        match self {
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warning => "WARNING",
            Level::Error => "ERROR",
        }
    }
}

/// The text log of one run: stderr, plus the log file when there is one.
pub struct RunLog {
    threshold: Level,
    file: Option<(PathBuf, Mutex<File>)>,
    progress: Mutex<Option<ProgressLine>>,
}

impl RunLog {
    /// Where OpenCLIP's main puts the log file: `<logs>/<name>/out.log`, or
    /// `<logs>/<name>/out-<rank>` with `--log-local`.
    pub fn file_path(logs: &Path, name: &str, log_local: bool, rank: usize) -> PathBuf {
        let file_name = if log_local {
            format!("out-{rank}")
        } else {
            "out.log".to_string()
        };
        logs.join(name).join(file_name)
    }

    /// Logs to stderr and, when `log_file` is given, appends to it (creating
    /// it); records below INFO are dropped unless `debug` (`--debug`).
    pub fn open(log_file: Option<&Path>, debug: bool) -> Result<Self> {
        let file = match log_file {
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening the log file {}", path.display()))?;
                Some((path.to_path_buf(), Mutex::new(file)))
            }
            None => None,
        };
        Ok(RunLog {
            threshold: if debug { Level::Debug } else { Level::Info },
            file,
            progress: Mutex::new(None),
        })
    }

    /// Drops DEBUG and INFO records.
    pub fn warnings_only(mut self) -> Self {
        self.threshold = Level::Warning;
        self
    }

    /// The log file, if this log has one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_ref().map(|(path, _)| path.as_path())
    }

    /// Keeps `progress` below the records written to the terminal from now
    /// on (`None` detaches it).
    pub fn attach_progress(&self, progress: Option<ProgressLine>) {
        *self.progress.lock().unwrap_or_else(PoisonError::into_inner) = progress;
    }

    pub fn log(&self, level: Level, message: &str) -> Result<()> {
        if level < self.threshold {
            return Ok(());
        }
        let record = format_record(&chrono::Local::now(), level, message);
        let to_terminal = || {
            let mut stderr = std::io::stderr().lock();
            let _ = stderr.write_all(record.as_bytes());
            let _ = stderr.flush();
        };
        match &*self.progress.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(progress) => progress.around(to_terminal),
            None => to_terminal(),
        }
        if let Some((path, file)) = &self.file {
            let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
            file.write_all(record.as_bytes())
                .and_then(|()| file.flush())
                .with_context(|| format!("writing the log file {}", path.display()))?;
        }
        Ok(())
    }

    pub fn debug(&self, message: &str) -> Result<()> {
        self.log(Level::Debug, message)
    }

    pub fn info(&self, message: &str) -> Result<()> {
        self.log(Level::Info, message)
    }

    pub fn warning(&self, message: &str) -> Result<()> {
        self.log(Level::Warning, message)
    }

    pub fn error(&self, message: &str) -> Result<()> {
        self.log(Level::Error, message)
    }
}

/// One record with its newline; a message of several lines stays one record,
/// as in Python.
fn format_record<Tz: chrono::TimeZone>(
    time: &chrono::DateTime<Tz>,
    level: Level,
    message: &str,
) -> String
where
    Tz::Offset: std::fmt::Display,
{
    format!(
        "{} | {} | {message}\n",
        time.format("%Y-%m-%d,%H:%M:%S"),
        level.name()
    )
}
