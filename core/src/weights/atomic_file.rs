//! Replacing a file atomically: readers see the old file or the complete new
//! one, never a partial write, and a failed write leaves no debris.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

/// Writes `path` through `write`, which gets a fresh temporary file in the
/// same directory (hidden, named `.<file name>.tmp<pid>`). The temporary
/// file is synced to disk and renamed over `path`, then the directory is
/// synced so the rename itself survives a crash. On any error the temporary
/// file is removed and an existing `path` is untouched.
pub(crate) fn write_atomically(path: &Path, write: impl FnOnce(&File) -> Result<()>) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("the path does not name a file"))?;
    let mut temp_name = OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp{}", std::process::id()));
    let temp_path: PathBuf = path.with_file_name(temp_name);

    let file = File::create(&temp_path)
        .with_context(|| format!("creating the temporary file {}", temp_path.display()))?;
    let written = write(&file)
        .and_then(|()| file.sync_all().context("syncing the file to disk"))
        .and_then(|()| {
            std::fs::rename(&temp_path, path).context("renaming the temporary file into place")
        });
    drop(file);
    if written.is_err() {
        // The temporary file is only debris at this point; a failure to
        // remove it must not hide the error that matters.
        let _ = std::fs::remove_file(&temp_path);
        return written;
    }
    sync_parent_directory(path)
}

/// Syncs the directory holding `path`, making a rename into it durable.
fn sync_parent_directory(path: &Path) -> Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(directory)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("syncing the directory {}", directory.display()))
}
