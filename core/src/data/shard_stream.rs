//! Opening a shard for streaming, wherever it lives: local paths and
//! `file://` URLs through the filesystem; `s3://`, `gs://`, `az://` (and the
//! other Azure schemes) and `http(s)://` through the `object_store` crate,
//! with credentials and options from the usual environment variables
//! (`AWS_ACCESS_KEY_ID`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`...;
//! see [`crate::object_stores`]).
//!
//! Object stores are async; a [`ShardOpener`] owns a small
//! [`IoRuntime`] and its readers block on it, so they must be used from
//! ordinary threads (the shard reader's), never from inside an async task.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::sync::{Arc, OnceLock};

use ::object_store::ObjectStoreExt;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use url::Url;

use crate::object_stores::{open_store, IoRuntime, Location};

/// Read-ahead of local shard files: tar members are read in 512-byte blocks.
const LOCAL_READ_BUFFER_BYTES: usize = 1 << 20;

/// Threads of the runtime that drives object-store downloads.
const OBJECT_STORE_IO_THREADS: usize = 2;

/// Where `shard` lives; `pipe:` URLs (which OpenCLIP hands to a shell) are
/// refused with a hint.
fn shard_location(shard: &str) -> Result<Location> {
    if shard.starts_with("pipe:") {
        bail!(
            "{shard:?}: `pipe:` shard URLs are not supported; give the object-store URL (s3://, gs://, az://, https://) directly"
        );
    }
    Location::parse(shard).with_context(|| format!("the shard {shard:?}"))
}

/// Opens shards for streaming; shareable across reader threads.
#[derive(Default)]
pub struct ShardOpener {
    runtime: OnceLock<Arc<IoRuntime>>,
}

impl ShardOpener {
    pub fn new() -> ShardOpener {
        ShardOpener::default()
    }

    /// A reader of the shard's bytes from the start; errors name the shard.
    pub fn open(&self, shard: &str) -> Result<Box<dyn Read + Send>> {
        match shard_location(shard)? {
            Location::Local(path) => {
                let file = File::open(&path)
                    .with_context(|| format!("cannot open the shard {}", path.display()))?;
                Ok(Box::new(BufReader::with_capacity(
                    LOCAL_READ_BUFFER_BYTES,
                    file,
                )))
            }
            Location::Store(url) => self.open_object(shard, &url),
        }
    }

    fn open_object(&self, shard: &str, url: &Url) -> Result<Box<dyn Read + Send>> {
        let runtime = self.runtime()?;
        let (store, path) = open_store(url)?;
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

    fn runtime(&self) -> Result<Arc<IoRuntime>> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime.clone());
        }
        let runtime = IoRuntime::new("clipflow-object-store", OBJECT_STORE_IO_THREADS)?;
        Ok(self.runtime.get_or_init(|| Arc::new(runtime)).clone())
    }
}

/// A blocking reader over an object's byte stream.
struct ObjectReader {
    runtime: Arc<IoRuntime>,
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
    fn pipe_urls_are_refused_with_a_hint() {
        let error = shard_location("pipe:cat a.tar").unwrap_err().to_string();
        assert!(error.contains("s3://"), "{error}");
        assert!(shard_location("ftp://host/a.tar").is_err());
    }
}
