//! The remote syncer: mirrors a run's local folder (OpenCLIP's
//! `<--logs>/<--name>`: log, params, checkpoints) to a [`RemoteFolder`]
//! (`<--remote-sync>/<--name>`), once when started, then every `every` on its
//! own thread, and once more when finished.
//!
//! A pass uploads each file that is new or changed since this syncer last
//! uploaded it (size or modification time differ); a file it has not
//! uploaded yet counts as already there when the remote holds the same size
//! with a modification time no older than the local one (a resumed run does
//! not upload its checkpoints again). Files still being written are never
//! uploaded ([`is_left_out_of_mirror`]: hidden temporary names of atomic writes,
//! `tmp.pt`, `*.tmp`, and `epoch_latest.pt`, which OpenCLIP's sync leaves out
//! too). Each upload reads from one open handle, so a file replaced by a
//! rename mid-upload still goes up whole; if it changed, the next pass sends
//! it again. Nothing is ever deleted from the remote.
//!
//! Errors of periodic passes are logged and counted, and the next pass
//! retries; the first pass's error is returned by [`RemoteSyncer::start`],
//! and the final pass's by [`RemoteSyncer::finish`]. Every pass runs in a
//! `remote_sync` tracing span.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::remote_folder::{is_left_out_of_mirror, RemoteFolder};

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncPass {
    /// Files uploaded because they were new or had changed.
    pub uploaded: usize,
    /// Bytes in those files.
    pub uploaded_bytes: u64,
    /// Files already up to date on the remote.
    pub unchanged: usize,
}

/// What a syncer did over its life, final pass included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub passes: usize,
    /// Passes that stopped on an error (logged when they happened).
    pub failed_passes: usize,
    pub files_uploaded: usize,
    pub bytes_uploaded: u64,
}

/// Mirrors a local folder to a remote one in the background; see the module
/// documentation. Dropping it without [`RemoteSyncer::finish`] stops the
/// thread (waiting for a pass in progress) without a final pass.
pub struct RemoteSyncer {
    commands: Option<Sender<Command>>,
    worker: Option<JoinHandle<Mirror>>,
}

enum Command {
    SyncNow(Sender<Result<SyncPass>>),
}

impl RemoteSyncer {
    /// Opens `remote`, mirrors `local` to it once (an error here means the
    /// remote is unusable, so nothing has started), then starts the thread
    /// that mirrors again every `every`. A zero `every` mirrors back to back,
    /// as OpenCLIP's loop does with `--remote-sync-frequency 0`.
    pub fn start(local: impl Into<PathBuf>, remote: &str, every: Duration) -> Result<RemoteSyncer> {
        let local = local.into();
        let remote = RemoteFolder::open(remote)?;
        if !local.is_dir() {
            bail!(
                "the folder {} to mirror to {} does not exist",
                local.display(),
                remote.url()
            );
        }
        refuse_remote_inside_local(&local, &remote)?;
        let mut mirror = Mirror {
            local,
            remote,
            uploaded: HashMap::new(),
            report: SyncReport::default(),
        };
        mirror.pass().with_context(|| {
            format!(
                "the first sync of {} to {} failed",
                mirror.local.display(),
                mirror.remote.url()
            )
        })?;
        let (commands, received) = crossbeam_channel::bounded(1);
        let worker = std::thread::Builder::new()
            .name("clipflow-remote-sync".to_owned())
            .spawn(move || mirror_periodically(mirror, received, every))
            .context("starting the remote sync thread")?;
        Ok(RemoteSyncer {
            commands: Some(commands),
            worker: Some(worker),
        })
    }

    /// Runs a pass now (waiting for one in progress first) and returns what
    /// it did; the next periodic pass is then `every` away.
    pub fn sync_now(&self) -> Result<SyncPass> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let stopped = || anyhow!("the remote sync thread has stopped");
        self.commands
            .as_ref()
            .ok_or_else(stopped)?
            .send(Command::SyncNow(reply))
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    /// Stops the periodic passes, runs the final one, and returns the
    /// totals, or the final pass's error.
    pub fn finish(mut self) -> Result<SyncReport> {
        let mut mirror = self.stop()?;
        mirror.pass().with_context(|| {
            format!(
                "the final sync of {} to {} failed",
                mirror.local.display(),
                mirror.remote.url()
            )
        })?;
        Ok(mirror.report)
    }

    fn stop(&mut self) -> Result<Mirror> {
        // Closing the command channel is the thread's signal to return.
        self.commands = None;
        let worker = self
            .worker
            .take()
            .ok_or_else(|| anyhow!("the remote syncer was already stopped"))?;
        worker
            .join()
            .map_err(|_| anyhow!("the remote sync thread panicked"))
    }
}

impl Drop for RemoteSyncer {
    fn drop(&mut self) {
        if self.worker.is_some() {
            let _ = self.stop();
        }
    }
}

/// The syncer thread: a pass every `every` or on request, until the command
/// channel closes; hands the mirror back for the final pass.
fn mirror_periodically(mut mirror: Mirror, commands: Receiver<Command>, every: Duration) -> Mirror {
    loop {
        // A period too long to represent as an instant never comes.
        let received = match Instant::now().checked_add(every) {
            Some(deadline) => commands.recv_deadline(deadline),
            None => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(Command::SyncNow(reply)) => {
                let _ = reply.send(mirror.pass());
            }
            Err(RecvTimeoutError::Timeout) => {
                // Already logged and counted by the pass; the next one retries.
                let _ = mirror.pass();
            }
            Err(RecvTimeoutError::Disconnected) => return mirror,
        }
    }
}

/// A local file as last seen: a change to either means upload again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LocalVersion {
    size: u64,
    modified: SystemTime,
}

impl LocalVersion {
    fn of(meta: &fs::Metadata) -> io::Result<LocalVersion> {
        Ok(LocalVersion {
            size: meta.len(),
            modified: meta.modified()?,
        })
    }
}

struct Mirror {
    local: PathBuf,
    remote: RemoteFolder,
    /// Per `/`-separated relative name, the version last uploaded (or found
    /// already on the remote).
    uploaded: HashMap<String, LocalVersion>,
    report: SyncReport,
}

impl Mirror {
    /// One pass, in a span, counted in the report; errors are logged too.
    fn pass(&mut self) -> Result<SyncPass> {
        let span = tracing::info_span!("remote_sync", local = %self.local.display(), remote = %self.remote.url());
        let _entered = span.enter();
        let started = Instant::now();
        let outcome = self.upload_changes();
        self.report.passes += 1;
        match &outcome {
            Ok(pass) => {
                self.report.files_uploaded += pass.uploaded;
                self.report.bytes_uploaded += pass.uploaded_bytes;
                tracing::info!(
                    uploaded = pass.uploaded,
                    uploaded_bytes = pass.uploaded_bytes,
                    unchanged = pass.unchanged,
                    seconds = started.elapsed().as_secs_f64(),
                    "remote sync done"
                );
            }
            Err(error) => {
                self.report.failed_passes += 1;
                tracing::error!(error = %format!("{error:#}"), "remote sync failed");
            }
        }
        outcome
    }

    fn upload_changes(&mut self) -> Result<SyncPass> {
        let mut pass = SyncPass::default();
        for name in files_to_mirror(&self.local)? {
            let path = self.local.join(&name);
            let version = match fs::metadata(&path) {
                Ok(meta) => LocalVersion::of(&meta)?,
                // Deleted since the listing (--delete-previous-checkpoint).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            if self.is_on_remote(&name, version)? {
                pass.unchanged += 1;
                continue;
            }
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
            };
            let opened = LocalVersion::of(&file.metadata()?)?;
            pass.uploaded_bytes += self.remote.upload(&name, &mut file)?;
            pass.uploaded += 1;
            self.uploaded.insert(name, opened);
        }
        Ok(pass)
    }

    /// Whether the remote already holds this version of `name`.
    fn is_on_remote(&mut self, name: &str, version: LocalVersion) -> Result<bool> {
        if let Some(uploaded) = self.uploaded.get(name) {
            return Ok(*uploaded == version);
        }
        let present = self.remote.stat(name)?.is_some_and(|remote| {
            remote.size == version.size && remote.modified >= whole_seconds(version.modified)
        });
        if present {
            self.uploaded.insert(name.to_owned(), version);
        }
        Ok(present)
    }
}

/// `time` rounded down to a whole second: object stores keep modification
/// times to the second, so an upload in the same second as the last local
/// write would otherwise look older than it.
fn whole_seconds(time: SystemTime) -> SystemTime {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since_epoch) => SystemTime::UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs()),
        Err(_) => time,
    }
}

/// The files under `root` as sorted `/`-separated relative names, leaving
/// out files in progress and hidden folders; symbolic links to files are
/// followed, those to folders are not.
fn files_to_mirror(root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut folders = vec![(root.to_path_buf(), String::new())];
    while let Some((folder, prefix)) = folders.pop() {
        let entries =
            fs::read_dir(&folder).with_context(|| format!("listing {}", folder.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", folder.display()))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                tracing::warn!(path = %entry.path().display(), "not mirrored: the name is not UTF-8");
                continue;
            };
            if is_left_out_of_mirror(file_name) {
                continue;
            }
            let name = format!("{prefix}{file_name}");
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push((entry.path(), format!("{name}/")));
            } else if kind.is_file() || (kind.is_symlink() && entry.path().is_file()) {
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}

/// A local remote folder inside the mirrored one would be mirrored into
/// itself, growing on every pass.
fn refuse_remote_inside_local(local: &Path, remote: &RemoteFolder) -> Result<()> {
    let Some(remote_path) = remote.local_path() else {
        return Ok(());
    };
    let local = local
        .canonicalize()
        .with_context(|| format!("resolving {}", local.display()))?;
    // The remote folder may not exist yet: resolve its nearest existing ancestor.
    let existing = remote_path
        .ancestors()
        .find_map(|ancestor| ancestor.canonicalize().ok());
    if existing.is_some_and(|ancestor| ancestor.starts_with(&local)) {
        bail!(
            "the remote folder {} is inside the folder it mirrors, {}",
            remote.url(),
            local.display()
        );
    }
    Ok(())
}
