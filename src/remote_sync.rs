//! OpenCLIP's remote sync for `clipflow train`: `--remote-sync URL` mirrors
//! the run folder `<--logs>/<name>` to `<URL>/<name>` once before training
//! (a failure stops the run, as in OpenCLIP), every
//! `--remote-sync-frequency` seconds during it, and once more at the end; and
//! `--resume latest` with `--remote-sync` resumes from the newest checkpoint
//! on the remote, not the local folder.
//!
//! Differences from OpenCLIP, all in what does the copying: OpenCLIP's `s3`
//! protocol shells out to `aws s3 sync` and its `fsspec` one copies through
//! fsspec; clipflow does both through the `object_store` crate (s3://, gs://,
//! az://, http(s)://, and local folders or file:// URLs), so the two
//! `--remote-sync-protocol` values behave the same, and `--resume latest`
//! works with either (OpenCLIP allows it with `s3` only). What is copied is
//! the same: new or changed files, never `epoch_latest.pt`, never deletions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clipflow_actors::remote_folder::{join_remote, RemoteFolder};
use clipflow_actors::remote_syncer::RemoteSyncer;

use crate::train_args::TrainArgs;

/// Starts mirroring `run_dir` (`<--logs>/<name>`) to `<--remote-sync>/<name>`
/// after a first, synchronous pass; `None` without --remote-sync. Call
/// [`RemoteSyncer::finish`] when training ends for the final pass.
pub fn start_remote_sync(
    args: &TrainArgs,
    name: &str,
    run_dir: &Path,
) -> Result<Option<RemoteSyncer>> {
    let Some(remote_sync) = &args.remote_sync else {
        return Ok(None);
    };
    let remote = join_remote(remote_sync, name);
    let every = Duration::from_secs(args.remote_sync_frequency);
    let syncer = RemoteSyncer::start(run_dir, &remote, every)
        .with_context(|| format!("--remote-sync {remote_sync}"))?;
    Ok(Some(syncer))
}

/// For `--resume latest` with --remote-sync: finds the newest checkpoint in
/// `<--remote-sync>/<name>/checkpoints` (last `.pt` file in natural order,
/// as OpenCLIP picks it), downloads it into `<run_dir>/checkpoints` unless an
/// equal-sized copy is already there, and returns the local path; `None`
/// when the remote has no checkpoint, or without --remote-sync.
///
/// Refuses --save-most-recent, as OpenCLIP does: `epoch_latest.pt` is never
/// uploaded, so the remote cannot hold the checkpoint that flag resumes from.
pub fn fetch_latest_remote_checkpoint(
    args: &TrainArgs,
    name: &str,
    run_dir: &Path,
) -> Result<Option<PathBuf>> {
    let Some(remote_sync) = &args.remote_sync else {
        return Ok(None);
    };
    if args.save_most_recent {
        bail!(
            "--resume latest with --remote-sync cannot use --save-most-recent: epoch_latest.pt is never uploaded, so the remote never holds it; drop --save-most-recent"
        );
    }
    let context = || format!("--resume latest from --remote-sync {remote_sync}");
    let remote = RemoteFolder::open(&join_remote(remote_sync, name))
        .with_context(context)?
        .subfolder("checkpoints");
    let Some(newest) = remote.newest_checkpoint().with_context(context)? else {
        tracing::info!(remote = remote.url(), "no checkpoint to resume from");
        return Ok(None);
    };
    let local = run_dir.join("checkpoints").join(&newest);
    let remote_size = remote.stat(&newest).with_context(context)?.map(|f| f.size);
    let local_size = std::fs::metadata(&local).ok().map(|meta| meta.len());
    if local_size.is_none() || local_size != remote_size {
        tracing::info!(remote = %remote.describe(&newest), local = %local.display(), "downloading the checkpoint to resume from");
        remote.download(&newest, &local).with_context(context)?;
    }
    Ok(Some(local))
}
