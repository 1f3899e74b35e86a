//! The local HuggingFace hub cache, read offline: where `huggingface_hub`
//! keeps the repos it downloaded (`models--ORG--NAME/refs/main`, naming a
//! revision, and `models--ORG--NAME/snapshots/REVISION/FILE`), so that a
//! file OpenCLIP would fetch from the hub (a tokenizer, pretrained weights)
//! is found where the user already has it. Nothing is downloaded: a file
//! that is not there is an error naming the repo and file, and saying how
//! to fetch it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// A hub cache folder (the one `huggingface_hub` writes to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    root: PathBuf,
}

impl HubCache {
    /// The cache `huggingface_hub` uses: `cache_dir` when given (OpenCLIP's
    /// `--cache-dir`, passed to the hub as its cache), else `HF_HUB_CACHE`,
    /// else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub fn locate(cache_dir: Option<&Path>) -> HubCache {
        let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        let root = if let Some(dir) = cache_dir {
            dir.to_path_buf()
        } else if let Some(cache) = var("HF_HUB_CACHE") {
            PathBuf::from(cache)
        } else if let Some(home) = var("HF_HOME") {
            Path::new(&home).join("hub")
        } else if let Some(xdg) = var("XDG_CACHE_HOME") {
            Path::new(&xdg).join("huggingface/hub")
        } else {
            Path::new(&var("HOME").unwrap_or_default()).join(".cache/huggingface/hub")
        };
        HubCache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of model repo `repo` (`ORG/NAME`, or a bare `NAME`).
    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The snapshot of `repo` that `refs/main` names (or the only snapshot,
    /// when the cache has no refs).
    pub fn snapshot(&self, repo: &str) -> Result<PathBuf> {
        let dir = self.repo_dir(repo);
        if !dir.is_dir() {
            bail!(
                "the HuggingFace repo {repo} is not in the hub cache {} (no {}); \
                 fetch it with `hf download {repo}` (huggingface_hub's CLI; \
                 `huggingface-cli download` in older releases), or set HF_HUB_CACHE, \
                 HF_HOME or --cache-dir to the cache that has it",
                self.root.display(),
                dir.display()
            );
        }
        let main = dir.join("refs/main");
        let revision = match std::fs::read_to_string(&main) {
            Ok(text) => text.trim().to_string(),
            Err(_) => {
                let snapshots: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
                    .map(|entries| {
                        entries
                            .filter_map(|entry| entry.ok())
                            .map(|entry| entry.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                match snapshots.as_slice() {
                    [only] => only.clone(),
                    [] => bail!(
                        "the hub cache's {} has no snapshot; fetch it again with `hf download {repo}`",
                        dir.display()
                    ),
                    _ => bail!(
                        "the hub cache's {} has several snapshots and no refs/main saying \
                         which is current",
                        dir.display()
                    ),
                }
            }
        };
        let snapshot = dir.join("snapshots").join(&revision);
        if !snapshot.is_dir() {
            bail!(
                "{} names revision {revision}, which the hub cache has no snapshot of ({}); \
                 fetch it again with `hf download {repo}`",
                main.display(),
                snapshot.display()
            );
        }
        Ok(snapshot)
    }

    /// `file` of `repo`'s current snapshot.
    pub fn file(&self, repo: &str, file: &str) -> Result<PathBuf> {
        let path = self.snapshot(repo)?.join(file);
        if !path.is_file() {
            bail!(
                "the hub cache has {repo} but not its {file} ({}); fetch it with \
                 `hf download {repo} {file}`",
                path.display()
            );
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_with(repo: &str, files: &[&str], refs: bool) -> (tempfile::TempDir, HubCache) {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir
            .path()
            .join(format!("models--{}", repo.replace('/', "--")));
        let snapshot = repo_dir.join("snapshots/abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        if refs {
            std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
            std::fs::write(repo_dir.join("refs/main"), "abc123").unwrap();
        }
        for file in files {
            std::fs::write(snapshot.join(file), "{}").unwrap();
        }
        let cache = HubCache::locate(Some(dir.path()));
        (dir, cache)
    }

    #[test]
    fn a_file_is_found_in_the_snapshot_refs_main_names() {
        let (_dir, cache) = cache_with("timm/ViT-B-16-SigLIP", &["tokenizer.json"], true);
        let path = cache
            .file("timm/ViT-B-16-SigLIP", "tokenizer.json")
            .unwrap();
        assert!(path.ends_with("models--timm--ViT-B-16-SigLIP/snapshots/abc123/tokenizer.json"));
        // Without refs, the only snapshot.
        let (_dir, cache) = cache_with("bert-base-uncased", &["tokenizer.json"], false);
        assert!(cache.file("bert-base-uncased", "tokenizer.json").is_ok());
    }

    #[test]
    fn what_is_missing_is_named_with_how_to_fetch_it() {
        let (_dir, cache) = cache_with("timm/ViT-B-16-SigLIP", &["config.json"], true);
        let error = cache
            .file("timm/ViT-B-16-SigLIP", "tokenizer.json")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("hf download timm/ViT-B-16-SigLIP tokenizer.json"),
            "{error}"
        );
        let error = cache.snapshot("org/absent").unwrap_err().to_string();
        assert!(
            error.contains("org/absent") && error.contains("models--org--absent"),
            "{error}"
        );
    }
}
