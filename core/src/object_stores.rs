//! Where a location given on the command line points (a local path, or an
//! object in a store the `object_store` crate reaches: S3, GCS, Azure,
//! HTTP), and the store itself, configured from its provider's environment
//! variables. Shards (`--train-data`) and remote folders (`--remote-sync`)
//! both go through here.
//!
//! Stores are async; callers on ordinary threads reach them through an
//! [`IoRuntime`], which may be dropped anywhere, an actor's async task
//! included. TLS uses rustls with the `ring` provider, which keeps aws-lc
//! (and its C/CMake build) out of the tree.
//!
//! Only variables in the providers' own namespaces configure a store
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`, as `object_store`'s `from_env`
//! builders read them); an unrelated `TOKEN` or `REGION` variable of the
//! user's shell is never taken for a store setting.

use std::future::Future;
use std::path::PathBuf;

use ::object_store::path::Path as ObjectPath;
use ::object_store::{parse_url_opts, ObjectStore};
use anyhow::{anyhow, bail, Context, Result};
use tokio::runtime::Runtime;
use url::Url;

/// The URL schemes whose objects go through the `object_store` crate.
const STORE_SCHEMES: [&str; 10] = [
    "s3", "s3a", "gs", "az", "adl", "azure", "abfs", "abfss", "http", "https",
];

/// The environment variable prefixes of the stores' settings.
const PROVIDER_PREFIXES: [&str; 3] = ["AWS_", "GOOGLE_", "AZURE_"];

/// What a location names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local path (given as a path or a `file://` URL).
    Local(PathBuf),
    /// An object or a folder in a store (S3, GCS, Azure, HTTP).
    Store(Url),
}

impl Location {
    /// Parses a path or URL; an unsupported scheme is an error that lists
    /// the supported ones.
    pub fn parse(text: &str) -> Result<Location> {
        if !text.contains("://") {
            return Ok(Location::Local(PathBuf::from(text)));
        }
        let url = Url::parse(text).with_context(|| format!("{text:?} is not a valid URL"))?;
        match url.scheme() {
            "file" => url
                .to_file_path()
                .map(Location::Local)
                .map_err(|()| anyhow!("{text:?} is not a local file URL")),
            scheme if STORE_SCHEMES.contains(&scheme) => Ok(Location::Store(url)),
            other => bail!(
                "{text:?}: unsupported URL scheme {other:?}; give a local path or a file://, s3://, gs://, az://, http:// or https:// URL"
            ),
        }
    }
}

/// The store holding `url` and the object's (or folder's) path inside it,
/// configured from the `AWS_*`, `GOOGLE_*` and `AZURE_*` environment
/// variables (credentials, region, endpoint, `AWS_ALLOW_HTTP`...).
///
/// An `http://` URL asks for plain HTTP, which the store's client refuses
/// unless told (`https://` needs nothing).
pub fn open_store(url: &Url) -> Result<(Box<dyn ObjectStore>, ObjectPath)> {
    // The store's HTTP client needs rustls's process-wide crypto provider
    // when it is built; a second install (by an earlier store, or by the
    // embedding program) is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut settings: Vec<(String, String)> = std::env::vars()
        .filter(|(key, _)| PROVIDER_PREFIXES.iter().any(|p| key.starts_with(p)))
        .collect();
    if url.scheme() == "http" {
        settings.push(("allow_http".into(), "true".into()));
    }
    parse_url_opts(url, settings)
        .with_context(|| format!("cannot set up the object store for {url}"))
}

/// A tokio runtime that drives object-store calls for threads that block on
/// them (shard readers, the remote syncer's uploads).
pub struct IoRuntime {
    /// Always `Some` until dropped.
    runtime: Option<Runtime>,
}

impl IoRuntime {
    /// A runtime with `threads` worker threads named `name`.
    pub fn new(name: &str, threads: usize) -> Result<IoRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .with_context(|| format!("cannot start the I/O runtime {name}"))?;
        Ok(IoRuntime {
            runtime: Some(runtime),
        })
    }

    /// Runs `future` to completion, blocking this thread, which must not be
    /// one of an async runtime's.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime
            .as_ref()
            .expect("the runtime lives until dropped")
            .block_on(future)
    }
}

impl Drop for IoRuntime {
    /// Shuts down without waiting for the worker threads: a plain drop
    /// blocks, which tokio refuses inside an async context (where an
    /// actor drops the stage that owns this runtime).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("data/a.tar").unwrap(),
            Location::Local("data/a.tar".into())
        );
        assert_eq!(
            Location::parse("file:///data/a.tar").unwrap(),
            Location::Local("/data/a.tar".into())
        );
        for url in [
            "s3://bucket/a.tar",
            "gs://b/a",
            "az://c/a",
            "https://host/a.tar",
        ] {
            assert!(
                matches!(Location::parse(url).unwrap(), Location::Store(_)),
                "{url}"
            );
        }
        let error = Location::parse("ftp://host/a.tar").unwrap_err().to_string();
        assert!(
            error.contains("\"ftp\"") && error.contains("s3://"),
            "{error}"
        );
    }

    #[test]
    fn an_io_runtime_can_be_dropped_inside_an_async_context() {
        let runtime = IoRuntime::new("test-io", 1).unwrap();
        assert_eq!(runtime.block_on(async { 42 }), 42);
        // An actor's task, as where a shard reader stage is dropped.
        let actor = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        actor.block_on(async move { drop(runtime) });
    }
}
