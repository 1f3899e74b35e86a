//! Opening a shard for streaming, wherever it lives: local paths and
//! `file://` URLs through the filesystem; `s3://`, `gs://`, `az://` (and the
//! other Azure schemes) and `http(s)://` through the `object_store` crate,
//! with credentials and options from the usual environment variables
//! (`AWS_ACCESS_KEY_ID`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`...).
//!
//! Object stores are async; a [`ShardOpener`] owns a small tokio runtime and
//! its readers block on it, so they must be used from ordinary threads (the
//! shard reader's), never from inside an async task. TLS uses rustls with the
//! `ring` provider, which keeps aws-lc (and its C/CMake build) out of the tree.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use ::object_store::{parse_url_opts, ObjectStoreExt};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use tokio::runtime::Runtime;
use url::Url;

/// Read-ahead of local shard files: tar members are read in 512-byte blocks.
const LOCAL_READ_BUFFER_BYTES: usize = 1 << 20;

/// Threads of the runtime that drives object-store downloads.
const OBJECT_STORE_IO_THREADS: usize = 2;

/// Where a shard URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardLocation {
    /// A local path (given as a path or a `file://` URL).
    Local(PathBuf),
    /// An object in a store `object_store` reaches (S3, GCS, Azure, HTTP).
    ObjectStore(Url),
}

impl ShardLocation {
    pub fn parse(shard: &str) -> Result<ShardLocation> {
        if shard.starts_with("pipe:") {
            bail!(
                "{shard:?}: `pipe:` shard URLs are not supported; give the object-store URL (s3://, gs://, az://, https://) directly"
            );
        }
        if !shard.contains("://") {
            return Ok(ShardLocation::Local(PathBuf::from(shard)));
        }
        let url = Url::parse(shard).with_context(|| format!("{shard:?} is not a valid URL"))?;
        match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| anyhow::anyhow!("{shard:?} is not a local file URL"))?;
                Ok(ShardLocation::Local(path))
            }
            "s3" | "s3a" | "gs" | "az" | "adl" | "azure" | "abfs" | "abfss" | "http" | "https" => {
                Ok(ShardLocation::ObjectStore(url))
            }
            other => bail!(
                "{shard:?}: unsupported URL scheme {other:?}; shards can be local paths or file://, s3://, gs://, az://, http:// or https:// URLs"
            ),
        }
    }
}

/// Opens shards for streaming; shareable across reader threads.
#[derive(Default)]
pub struct ShardOpener {
    runtime: OnceLock<Arc<Runtime>>,
}

impl ShardOpener {
    pub fn new() -> ShardOpener {
        ShardOpener::default()
    }

    /// A reader of the shard's bytes from the start; errors name the shard.
    pub fn open(&self, shard: &str) -> Result<Box<dyn Read + Send>> {
        match ShardLocation::parse(shard)? {
            ShardLocation::Local(path) => {
                let file = File::open(&path)
                    .with_context(|| format!("cannot open the shard {}", path.display()))?;
                Ok(Box::new(BufReader::with_capacity(
                    LOCAL_READ_BUFFER_BYTES,
                    file,
                )))
            }
            ShardLocation::ObjectStore(url) => self.open_object(shard, &url),
        }
    }

    fn open_object(&self, shard: &str, url: &Url) -> Result<Box<dyn Read + Send>> {
        let runtime = self.runtime()?;
        let (store, path) = parse_url_opts(url, std::env::vars())
            .with_context(|| format!("cannot set up the object store for {shard}"))?;
        let chunks = runtime
            .block_on(async move { store.get(&path).await })
            .with_context(|| format!("cannot open the shard {shard}"))?
            .into_stream();
        Ok(Box::new(ObjectReader {
            runtime,
            chunks,
            current: Bytes::new(),
            shard: shard.to_owned(),
        }))
    }

    fn runtime(&self) -> Result<Arc<Runtime>> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime.clone());
        }
        // rustls needs a process-wide crypto provider; a second install (by
        // another opener, or by the embedding program) is refused harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(OBJECT_STORE_IO_THREADS)
            .thread_name("clipflow-object-store")
            .enable_all()
            .build()
            .context("cannot start the I/O runtime for object-store shards")?;
        Ok(self.runtime.get_or_init(|| Arc::new(runtime)).clone())
    }
}

/// A blocking reader over an object's byte stream.
struct ObjectReader {
    runtime: Arc<Runtime>,
    chunks: BoxStream<'static, ::object_store::Result<Bytes>>,
    current: Bytes,
    shard: String,
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.runtime.block_on(self.chunks.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(error)) => {
                    return Err(io::Error::other(format!(
                        "reading the shard {}: {error}",
                        self.shard
                    )))
                }
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            ShardLocation::parse("data/a.tar").unwrap(),
            ShardLocation::Local("data/a.tar".into())
        );
        assert_eq!(
            ShardLocation::parse("file:///data/a.tar").unwrap(),
            ShardLocation::Local("/data/a.tar".into())
        );
        assert!(matches!(
            ShardLocation::parse("s3://bucket/a.tar").unwrap(),
            ShardLocation::ObjectStore(_)
        ));
        assert!(ShardLocation::parse("pipe:cat a.tar").is_err());
        assert!(ShardLocation::parse("ftp://host/a.tar").is_err());
    }
}
