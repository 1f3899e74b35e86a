//! The files one topology is read from: the file named, then the file it
//! extends (`extends = "base.toml"`), then the one that extends, and so on.
//!
//! A base is looked for beside the file that names it, then in the base
//! folders given (clipflow's own `topologies/` folder, for the commands). A
//! file already in the chain is passed over, so a user's `train.toml` that
//! extends `train.toml` gets clipflow's, and no chain can loop.

use std::path::{Path, PathBuf};

use super::error::{TopologyError, TopologyErrors};

/// One file of a topology, as read.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// The chain of files a topology is read from, the named file first and the
/// base of every other file after it.
#[derive(Clone, Debug)]
pub struct TopologySources {
    files: Vec<SourceFile>,
}

impl TopologySources {
    /// Reads `path` and the files it extends.
    pub fn read(path: &Path, base_folders: &[PathBuf]) -> Result<Self, TopologyErrors> {
        let text = read_file(path, None)?;
        Self::from_text(path, text, base_folders)
    }

    /// The topology whose named file holds `text` (`path` names it in errors
    /// and is where its bases are first looked for).
    pub fn from_text(
        path: &Path,
        text: String,
        base_folders: &[PathBuf],
    ) -> Result<Self, TopologyErrors> {
        let mut files = vec![SourceFile {
            path: path.to_path_buf(),
            text,
        }];
        loop {
            let current = files.last().expect("the named file is first");
            let Some((base, line)) = extends(current)? else {
                return Ok(TopologySources { files });
            };
            let from = (current.path.clone(), line);
            let beside = current.path.parent().unwrap_or(Path::new("")).join(&base);
            let candidates =
                std::iter::once(beside).chain(base_folders.iter().map(|f| f.join(&base)));
            let found = candidates
                .filter(|candidate| candidate.is_file())
                .find(|candidate| !files.iter().any(|f| same_file(&f.path, candidate)));
            let Some(found) = found else {
                let mut looked = vec![current
                    .path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .display()
                    .to_string()];
                looked.extend(base_folders.iter().map(|f| f.display().to_string()));
                return Err(at(
                    &from,
                    format!(
                        "extends '{base}', which is in none of {} (a file that extends it \
                         does not count)",
                        looked.join(", ")
                    ),
                ));
            };
            let text = read_file(&found, Some(&from))?;
            files.push(SourceFile { path: found, text });
        }
    }

    /// The files, the named one first.
    pub fn files(&self) -> &[SourceFile] {
        &self.files
    }

    /// The file the topology was named by.
    pub fn named(&self) -> &SourceFile {
        &self.files[0]
    }
}

/// The part of a file read to find its base.
#[derive(serde::Deserialize)]
struct Head {
    extends: Option<toml::Spanned<toml::Value>>,
}

/// The base `file` names in `extends`, and the line it is named on.
fn extends(file: &SourceFile) -> Result<Option<(String, usize)>, TopologyErrors> {
    let head: Head = toml::from_str(&file.text).map_err(|error| {
        let line = error.span().map(|span| line_of(&file.text, span.start));
        TopologyErrors(vec![TopologyError {
            file: file.path.clone(),
            line,
            component: None,
            message: error.message().trim().to_string(),
        }])
    })?;
    let Some(value) = head.extends else {
        return Ok(None);
    };
    let line = line_of(&file.text, value.span().start);
    match value.get_ref().as_str() {
        Some(base) if !base.is_empty() => Ok(Some((base.to_string(), line))),
        _ => Err(at(
            &(file.path.clone(), line),
            format!("extends must name a topology file, got {}", value.get_ref()),
        )),
    }
}

fn read_file(path: &Path, named_at: Option<&(PathBuf, usize)>) -> Result<String, TopologyErrors> {
    std::fs::read_to_string(path).map_err(|error| match named_at {
        Some(from) => at(
            from,
            format!("cannot read {}, which it extends: {error}", path.display()),
        ),
        None => TopologyErrors(vec![TopologyError {
            file: path.to_path_buf(),
            line: None,
            component: None,
            message: format!("cannot read the file: {error}"),
        }]),
    })
}

fn at((file, line): &(PathBuf, usize), message: String) -> TopologyErrors {
    TopologyErrors(vec![TopologyError {
        file: file.clone(),
        line: Some(*line),
        component: None,
        message,
    }])
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The 1-based line of byte `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text[..end].matches('\n').count() + 1
}
