//! Replacing a file atomically: readers see the old file or the complete new
//! one, never a partial write, and a failed write leaves no debris. A
//! process killed mid-write leaves its hidden temporary file, which
//! [`remove_stale_temporaries`] clears away later.

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
    let temp_path: PathBuf = path.with_file_name(temporary_name(file_name, std::process::id()));

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

/// `.<file name>.tmp<pid>`: the temporary file of process `pid`.
fn temporary_name(file_name: &std::ffi::OsStr, pid: u32) -> OsString {
    let mut temp_name = OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp{pid}"));
    temp_name
}

/// Removes the temporary files that other processes' atomic writes left in
/// `dir` (a process killed mid-write cannot remove its own); returns their
/// paths. A `dir` that does not exist holds none.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let own = format!(".tmp{}", std::process::id());
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, pid)) = name.rsplit_once(".tmp") else {
            continue;
        };
        let is_temporary = name.starts_with('.')
            && !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !name.ends_with(&own);
        if is_temporary {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
            removed.push(entry.path());
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_go_and_everything_else_stays() {
        let dir = tempfile::tempdir().unwrap();
        let own = temporary_name("epoch_2.pt".as_ref(), std::process::id());
        for name in [
            ".epoch_latest.pt.tmp4242",
            "epoch_1.pt",
            ".hidden",
            "notes.tmp12",
            ".epoch_1.pt.tmpx",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        std::fs::write(dir.path().join(&own), b"").unwrap();
        let removed = remove_stale_temporaries(dir.path()).unwrap();
        assert_eq!(removed, vec![dir.path().join(".epoch_latest.pt.tmp4242")]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut expected = vec![
            ".epoch_1.pt.tmpx".to_string(),
            ".hidden".into(),
            "epoch_1.pt".into(),
            "notes.tmp12".into(),
            own.to_string_lossy().into_owned(),
        ];
        expected.sort();
        assert_eq!(left, expected);
    }
}
