//! A folder somewhere else that run files are copied into: a local path (or a
//! `file://` URL) through the filesystem, or a prefix in an object store
//! (`s3://`, `gs://`, `az://` and the other Azure schemes, `http(s)://`)
//! through the `object_store` crate, with credentials and options from the
//! usual environment variables (`AWS_ACCESS_KEY_ID`, `GOOGLE_SERVICE_ACCOUNT`...).
//!
//! Not an actor: the remote syncer ([`crate::remote_syncer`]) uploads through
//! it, and resuming from the newest remote checkpoint lists and downloads
//! through it. Every write is atomic: a local copy goes to a hidden temporary
//! name and is renamed into place; an object-store put (or multipart upload)
//! only becomes visible when complete. Calls block, so use it from ordinary
//! threads, never from inside an async task.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use clipflow_core::object_stores::{open_store, IoRuntime, Location};
use clipflow_core::train::run_folder::natural_key;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// Files up to this size go up in one put; larger ones as a multipart upload
/// of parts this size, so memory stays bounded for multi-gigabyte checkpoints.
const UPLOAD_PART_BYTES: usize = 16 << 20;

/// Parts of one multipart upload in flight at once.
const UPLOAD_PARTS_IN_FLIGHT: usize = 4;

/// What the remote holds at a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteFile {
    pub size: u64,
    pub modified: SystemTime,
}

/// A remote folder; file names inside it are `/`-separated relative paths.
pub struct RemoteFolder {
    url: String,
    backend: Backend,
}

enum Backend {
    Local(PathBuf),
    Store {
        store: Arc<dyn ObjectStore>,
        prefix: ObjectPath,
        runtime: Arc<IoRuntime>,
    },
}

/// `child` inside `folder`, joined as Python's `os.path.join` joins them
/// (OpenCLIP builds `<--remote-sync>/<--name>` that way): one `/` between.
pub fn join_remote(folder: &str, child: &str) -> String {
    if folder.is_empty() || folder.ends_with('/') {
        format!("{folder}{child}")
    } else {
        format!("{folder}/{child}")
    }
}

impl RemoteFolder {
    /// Opens the folder at `url` (a local path or a URL); nothing is created
    /// yet. Errors say which schemes are supported.
    pub fn open(url: &str) -> Result<RemoteFolder> {
        if url.is_empty() {
            bail!("the remote folder is empty; give a local folder or an s3://, gs://, az:// or https:// URL");
        }
        let backend = match Location::parse(url)? {
            Location::Local(path) => Backend::Local(path),
            Location::Store(parsed) => {
                let (store, prefix) = open_store(&parsed)?;
                Backend::Store {
                    store: Arc::from(store),
                    prefix,
                    runtime: Arc::new(io_runtime()?),
                }
            }
        };
        Ok(RemoteFolder {
            url: url.to_owned(),
            backend,
        })
    }

    /// The folder as given to [`RemoteFolder::open`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The folder's path when it is a local one.
    pub fn local_path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Local(root) => Some(root),
            Backend::Store { .. } => None,
        }
    }

    /// The sub-folder `name` (which may hold `/`), sharing this one's store.
    pub fn subfolder(&self, name: &str) -> RemoteFolder {
        let backend = match &self.backend {
            Backend::Local(root) => Backend::Local(local_path(root, name)),
            Backend::Store {
                store,
                prefix,
                runtime,
            } => Backend::Store {
                store: Arc::clone(store),
                prefix: object_path(prefix, name),
                runtime: Arc::clone(runtime),
            },
        };
        RemoteFolder {
            url: join_remote(&self.url, name),
            backend,
        }
    }

    /// Where `name` lives, for messages.
    pub fn describe(&self, name: &str) -> String {
        join_remote(&self.url, name)
    }

    /// Size and modification time of the file `name`, or `None` if absent.
    pub fn stat(&self, name: &str) -> Result<Option<RemoteFile>> {
        let found = match &self.backend {
            Backend::Local(root) => match fs::metadata(local_path(root, name)) {
                Ok(meta) if meta.is_file() => Some(RemoteFile {
                    size: meta.len(),
                    modified: meta.modified()?,
                }),
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            },
            Backend::Store {
                store,
                prefix,
                runtime,
            } => match runtime.block_on(store.head(&object_path(prefix, name))) {
                Ok(meta) => Some(RemoteFile {
                    size: meta.size,
                    modified: SystemTime::from(meta.last_modified),
                }),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            },
        };
        Ok(found)
    }

    /// Copies everything `source` yields to the file `name`, atomically;
    /// returns the number of bytes copied.
    pub fn upload(&self, name: &str, source: &mut File) -> Result<u64> {
        let uploaded = match &self.backend {
            Backend::Local(root) => {
                let target = local_path(root, name);
                write_atomically(&target, |out| Ok(io::copy(source, out)?))
            }
            Backend::Store {
                store,
                prefix,
                runtime,
            } => runtime.block_on(put_object(
                store.as_ref(),
                &object_path(prefix, name),
                source,
            )),
        };
        uploaded.with_context(|| format!("uploading to {}", self.describe(name)))
    }

    /// Names of the files directly inside the folder (not in sub-folders);
    /// empty when the folder does not exist.
    pub fn list_files(&self) -> Result<Vec<String>> {
        let names = match &self.backend {
            Backend::Local(root) => {
                let entries = match fs::read_dir(root) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(e).with_context(|| format!("listing {}", self.url)),
                };
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.with_context(|| format!("listing {}", self.url))?;
                    if entry.file_type()?.is_file() {
                        if let Some(name) = entry.file_name().to_str() {
                            names.push(name.to_owned());
                        }
                    }
                }
                names
            }
            Backend::Store {
                store,
                prefix,
                runtime,
            } => {
                let listing = runtime
                    .block_on(store.list_with_delimiter(Some(prefix)))
                    .with_context(|| format!("listing {}", self.url))?;
                listing
                    .objects
                    .iter()
                    .filter_map(|object| object.location.filename().map(str::to_owned))
                    .collect()
            }
        };
        Ok(names)
    }

    /// Copies the file `name` to the local path `target`, atomically, and
    /// gives the copy the remote file's modification time, so a mirror of
    /// `target`'s folder back to this one sees it as already there.
    pub fn download(&self, name: &str, target: &Path) -> Result<()> {
        let downloaded = match &self.backend {
            Backend::Local(root) => File::open(local_path(root, name))
                .map_err(anyhow::Error::from)
                .and_then(|mut source| {
                    let modified = source.metadata()?.modified()?;
                    write_atomically(target, |out| {
                        let copied = io::copy(&mut source, out)?;
                        out.set_modified(modified)?;
                        Ok(copied)
                    })
                }),
            Backend::Store {
                store,
                prefix,
                runtime,
            } => {
                let location = object_path(prefix, name);
                write_atomically(target, |out| {
                    runtime.block_on(async {
                        let object = store.get(&location).await?;
                        let modified = SystemTime::from(object.meta.last_modified);
                        let mut chunks = object.into_stream();
                        let mut copied = 0;
                        while let Some(chunk) = chunks.next().await {
                            let chunk = chunk?;
                            out.write_all(&chunk)?;
                            copied += chunk.len() as u64;
                        }
                        out.set_modified(modified)?;
                        Ok(copied)
                    })
                })
            }
        };
        downloaded.map(drop).with_context(|| {
            format!(
                "downloading {} to {}",
                self.describe(name),
                target.display()
            )
        })
    }

    /// The newest checkpoint directly in this folder, as OpenCLIP's
    /// `--resume latest` picks it: the last `.pt` file in natural order
    /// (`epoch_10.pt` after `epoch_9.pt`), leaving out temporary files
    /// ([`is_temporary`]), which OpenCLIP would not.
    pub fn newest_checkpoint(&self) -> Result<Option<String>> {
        let newest = self
            .list_files()?
            .into_iter()
            .filter(|name| name.ends_with(".pt") && !is_temporary(name))
            .max_by(|a, b| natural_key(a).cmp(&natural_key(b)));
        Ok(newest)
    }
}

/// Whether a file name marks a temporary file, still being written: hidden
/// names (the temporary files of atomic writes, `.epoch_3.pt.tmp123`),
/// OpenCLIP's `tmp.pt` staging file, and `*.tmp`.
pub fn is_temporary(file_name: &str) -> bool {
    file_name.starts_with('.') || file_name == "tmp.pt" || file_name.ends_with(".tmp")
}

/// Whether a mirror leaves the file out: temporary files, and
/// `epoch_latest.pt`, which is rewritten in place every epoch (OpenCLIP's
/// remote sync leaves it out for that reason).
pub fn is_left_out_of_mirror(file_name: &str) -> bool {
    is_temporary(file_name) || file_name.ends_with("epoch_latest.pt")
}

/// Runs `write` on a hidden temporary file beside `target`, then renames it
/// over `target`; on failure the temporary file is removed.
fn write_atomically(target: &Path, write: impl FnOnce(&mut File) -> Result<u64>) -> Result<u64> {
    let file_name = target
        .file_name()
        .ok_or_else(|| anyhow!("{} does not name a file", target.display()))?;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("creating the folder {}", parent.display()))?;
    }
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp{}", std::process::id()));
    let temp_path = target.with_file_name(temp_name);
    let written = File::create(&temp_path)
        .map_err(anyhow::Error::from)
        .and_then(|mut out| {
            let copied = write(&mut out)?;
            out.sync_all()?;
            Ok(copied)
        })
        .and_then(|copied| {
            fs::rename(&temp_path, target)?;
            Ok(copied)
        });
    if written.is_err() {
        // Only debris now; a failure to remove it must not hide the real error.
        let _ = fs::remove_file(&temp_path);
    }
    written
}

/// One put for small files, a multipart upload of bounded parts for big ones.
async fn put_object(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    source: &mut File,
) -> Result<u64> {
    let mut part = read_part(source)?;
    if part.len() < UPLOAD_PART_BYTES {
        let size = part.len() as u64;
        store.put(location, PutPayload::from(part)).await?;
        return Ok(size);
    }
    let upload = store.put_multipart(location).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART_BYTES);
    let mut size = 0;
    let uploaded: Result<()> = async {
        while !part.is_empty() {
            writer.wait_for_capacity(UPLOAD_PARTS_IN_FLIGHT).await?;
            size += part.len() as u64;
            writer.put(part.into());
            part = read_part(source)?;
        }
        Ok(())
    }
    .await;
    match uploaded {
        Ok(()) => {
            writer.finish().await?;
            Ok(size)
        }
        Err(e) => {
            // The upload never becomes visible; aborting frees its parts.
            let _ = writer.abort().await;
            Err(e)
        }
    }
}

/// Up to [`UPLOAD_PART_BYTES`] bytes; fewer only at the end of the file.
fn read_part(source: &mut File) -> Result<Vec<u8>> {
    let mut part = Vec::with_capacity(UPLOAD_PART_BYTES);
    Read::by_ref(source)
        .take(UPLOAD_PART_BYTES as u64)
        .read_to_end(&mut part)?;
    Ok(part)
}

fn local_path(root: &Path, name: &str) -> PathBuf {
    name.split('/')
        .filter(|part| !part.is_empty())
        .fold(root.to_path_buf(), |path, part| path.join(part))
}

fn object_path(prefix: &ObjectPath, name: &str) -> ObjectPath {
    name.split('/')
        .filter(|part| !part.is_empty())
        .fold(prefix.clone(), |path, part| path.join(part))
}

fn io_runtime() -> Result<IoRuntime> {
    IoRuntime::new("clipflow-remote-folder", 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    /// A folder in an in-memory object store: the same object_store calls as
    /// S3 or GCS, without a network.
    fn in_memory(prefix: &str) -> RemoteFolder {
        RemoteFolder {
            url: format!("memory:///{prefix}"),
            backend: Backend::Store {
                store: Arc::new(InMemory::new()),
                prefix: ObjectPath::from(prefix),
                runtime: Arc::new(io_runtime().unwrap()),
            },
        }
    }

    fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> File {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        File::open(path).unwrap()
    }

    #[test]
    fn object_store_upload_stat_list_download() {
        let local = tempfile::tempdir().unwrap();
        let remote = in_memory("bucket/run");
        // One byte over a part: the multipart path, with a short last part.
        let big: Vec<u8> = (0..UPLOAD_PART_BYTES + 1)
            .map(|i| (i % 251) as u8)
            .collect();
        for (name, bytes) in [
            ("out.log", &b"epoch 1\n"[..]),
            ("checkpoints/epoch_1.pt", &big),
        ] {
            let mut source = file_with(local.path(), "source", bytes);
            assert_eq!(
                remote.upload(name, &mut source).unwrap(),
                bytes.len() as u64
            );
            let stat = remote.stat(name).unwrap().expect("uploaded file is listed");
            assert_eq!(stat.size, bytes.len() as u64);
            let copy = local.path().join("copy");
            remote.download(name, &copy).unwrap();
            assert_eq!(fs::read(&copy).unwrap(), bytes, "{name}");
            assert_eq!(
                fs::metadata(&copy).unwrap().modified().unwrap(),
                stat.modified
            );
        }
        assert_eq!(remote.stat("missing").unwrap(), None);
        assert_eq!(remote.list_files().unwrap(), ["out.log"]);
        assert_eq!(
            remote.subfolder("checkpoints").list_files().unwrap(),
            ["epoch_1.pt"]
        );
    }

    #[test]
    fn newest_checkpoint_is_last_in_natural_order() {
        let local = tempfile::tempdir().unwrap();
        let remote = in_memory("run/checkpoints");
        assert_eq!(remote.newest_checkpoint().unwrap(), None);
        for name in [
            "epoch_9.pt",
            "epoch_10.pt",
            "epoch_2.pt",
            "tmp.pt",
            "notes.txt",
        ] {
            remote
                .upload(name, &mut file_with(local.path(), "source", b"x"))
                .unwrap();
        }
        assert_eq!(
            remote.newest_checkpoint().unwrap().as_deref(),
            Some("epoch_10.pt")
        );
        assert!(natural_key("Epoch_010.pt") == natural_key("epoch_10.pt"));
        assert!(natural_key("epoch_99999999999999999999999.pt") > natural_key("epoch_9.pt"));
    }

    #[test]
    fn urls_and_joins() {
        assert!(RemoteFolder::open("runs/backup")
            .unwrap()
            .local_path()
            .is_some());
        assert_eq!(
            RemoteFolder::open("file:///tmp/backup")
                .unwrap()
                .local_path(),
            Some(Path::new("/tmp/backup"))
        );
        let error = RemoteFolder::open("ftp://host/backup").err().unwrap();
        assert!(error.to_string().contains("\"ftp\""), "{error}");
        assert_eq!(join_remote("s3://b/runs", "exp"), "s3://b/runs/exp");
        assert_eq!(join_remote("s3://b/runs/", "exp"), "s3://b/runs/exp");
        for name in [".epoch_1.pt.tmp42", "tmp.pt", "a.tmp"] {
            assert!(is_temporary(name) && is_left_out_of_mirror(name), "{name}");
        }
        assert!(!is_temporary("epoch_latest.pt") && is_left_out_of_mirror("epoch_latest.pt"));
        assert!(!is_left_out_of_mirror("epoch_1.pt"));
    }
}
