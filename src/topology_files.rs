//! The topology files the commands run: one a user names (`--topology
//! FILE`), or else the one of that name in clipflow's `topologies/` folder,
//! read when the command starts (nothing is compiled into the binary).
//!
//! The folder is looked for beside the binary (`BIN_DIR/topologies/`), in
//! an install prefix (`BIN_DIR/../share/clipflow/topologies/`), and in the
//! source tree the binary was built from; the first that holds the file
//! wins.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A topology file and its text, read once.
#[derive(Debug, Clone)]
pub struct TopologyFile {
    /// How errors and the run's copy of it name the file.
    pub path: PathBuf,
    pub text: String,
}

impl TopologyFile {
    /// `path` when given (a user's file), else `name` from clipflow's
    /// `topologies/` folder.
    pub fn chosen(path: Option<&Path>, name: &str) -> Result<TopologyFile> {
        match path {
            Some(path) => Self::read(path),
            None => Self::standard(name),
        }
    }

    /// The file at `path`.
    pub fn read(path: &Path) -> Result<TopologyFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the topology file {}", path.display()))?;
        Ok(TopologyFile {
            path: path.to_path_buf(),
            text,
        })
    }

    /// `name` (e.g. `train.toml`) from the first `topologies/` folder that
    /// holds it.
    pub fn standard(name: &str) -> Result<TopologyFile> {
        let folders = standard_folders();
        match folders.iter().map(|f| f.join(name)).find(|p| p.is_file()) {
            Some(path) => Self::read(&path),
            None => {
                let looked: Vec<String> = folders.iter().map(|f| f.display().to_string()).collect();
                bail!(
                    "cannot find the topology {name}: no topologies/ folder holds it (looked in {}); \
                     put clipflow's topologies/ folder beside the binary, or give --topology FILE",
                    looked.join(", ")
                )
            }
        }
    }

    /// The file's name without its folders (`train.toml`).
    pub fn file_name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("topology.toml")
    }
}

/// Where clipflow's `topologies/` folder may be, in the order looked in.
fn standard_folders() -> Vec<PathBuf> {
    let mut folders = Vec::new();
    if let Some(bin_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        folders.push(bin_dir.join("topologies"));
        folders.push(bin_dir.join("../share/clipflow/topologies"));
    }
    folders.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("topologies"));
    folders
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_topologies_are_found_from_the_binary() {
        let train = TopologyFile::standard("train.toml").unwrap();
        assert_eq!(train.file_name(), "train.toml");
        assert!(train.text.contains("[stages.step-executor]"));
        let missing = TopologyFile::standard("no-such-topology.toml").unwrap_err();
        let message = format!("{missing:#}");
        assert!(message.contains("no-such-topology.toml"), "{message}");
        assert!(message.contains("--topology FILE"), "{message}");
    }

    #[test]
    fn a_missing_user_file_is_named() {
        let error = TopologyFile::chosen(Some(Path::new("/nonexistent/mine.toml")), "train.toml")
            .unwrap_err();
        assert!(format!("{error:#}").contains("/nonexistent/mine.toml"));
    }
}
