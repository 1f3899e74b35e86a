//! Tracing export: the `--otel` and `--otel-file` options and the `tracing`
//! subscriber they install, which turns the spans the runtime and actors emit
//! (a span per graph run, per stage worker and per processed item) into
//! OpenTelemetry spans of service `clipflow`.
//!
//! - `--otel` (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables) sends them over OTLP,
//!   HTTP/protobuf, to a collector (default `http://localhost:4318`).
//! - `--otel-file FILE` writes them to FILE as JSON lines, one span a line.
//!
//! With neither, no subscriber is installed and spans cost next to nothing.
//! Warnings (bad samples, restarted workers) still reach stderr when a
//! subscriber is installed. [`Telemetry::shutdown`] flushes every exporter;
//! `main` calls it before exiting, on errors too.

use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use opentelemetry::trace::{SpanId, Status, TracerProvider as _};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use serde_json::{json, Map};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

/// The standard variables that name an OTLP endpoint; either turns export on.
const OTLP_ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// Spans buffered for export before new ones are dropped, unless
/// `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise: one span per item makes
/// thousands a second, far more than the SDK's default of 2048.
const SPAN_QUEUE_SIZE: usize = 1 << 16;

/// How long exiting waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The options that turn tracing export on; they go before or after the
/// subcommand (`clipflow --otel run FILE`, `clipflow run --otel FILE`).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct TelemetryArgs {
    /// Send traces (a span per stage worker and per item) over OTLP
    /// HTTP/protobuf to OTEL_EXPORTER_OTLP_ENDPOINT (default
    /// http://localhost:4318); setting that variable also turns this on.
    #[arg(long, global = true)]
    pub otel: bool,
    /// Write traces to FILE as JSON lines, one span a line.
    #[arg(long, global = true, value_name = "FILE")]
    pub otel_file: Option<PathBuf>,
}

impl TelemetryArgs {
    /// True when OTLP export is on: `--otel`, or an endpoint variable is set.
    fn otlp_enabled(&self) -> bool {
        self.otel
            || OTLP_ENDPOINT_VARIABLES
                .iter()
                .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
    }
}

/// The installed exporters; [`Telemetry::shutdown`] flushes them.
#[must_use = "call shutdown() before exiting, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// The first export failure of any exporter, reported at shutdown.
    export_error: ExportError,
}

/// Where exporters leave the first error they meet (the SDK's batch
/// processors drop them otherwise).
type ExportError = Arc<Mutex<Option<String>>>;

impl Telemetry {
    /// Installs the global `tracing` subscriber the options ask for, with
    /// `command` (the subcommand's name) as a resource attribute. Installs
    /// nothing when no exporter is asked for.
    pub fn start(args: &TelemetryArgs, command: &str) -> Result<Telemetry> {
        let otlp = args.otlp_enabled();
        if !otlp && args.otel_file.is_none() {
            return Ok(Telemetry {
                provider: None,
                export_error: ExportError::default(),
            });
        }
        let export_error = ExportError::default();
        let batch_config = || {
            let mut config = BatchConfigBuilder::default();
            if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
                config = config.with_max_queue_size(SPAN_QUEUE_SIZE);
            }
            config.build()
        };
        let mut provider = SdkTracerProvider::builder().with_resource(resource(command));
        if otlp {
            // TLS for https endpoints goes through rustls with ring; an
            // earlier install (object stores) is just as good.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .build()
                .context("--otel: setting up the OTLP exporter")?;
            provider = provider.with_span_processor(
                BatchSpanProcessor::builder(ErrorKeeping::new(exporter, &export_error))
                    .with_batch_config(batch_config())
                    .build(),
            );
        }
        if let Some(path) = &args.otel_file {
            provider = provider.with_span_processor(
                BatchSpanProcessor::builder(ErrorKeeping::new(
                    JsonLinesExporter::create(path)?,
                    &export_error,
                ))
                .with_batch_config(batch_config())
                .build(),
            );
        }
        let provider = provider.build();
        let spans = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("clipflow"))
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_filter(
                // clipflow's own spans; the actor library's are noise here.
                Targets::new()
                    .with_target("clipflow", LevelFilter::TRACE)
                    .with_target("clipflow_actors", LevelFilter::TRACE)
                    .with_target("clipflow_core", LevelFilter::TRACE),
            );
        let warnings = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .with_filter(LevelFilter::WARN);
        let subscriber = tracing_subscriber::registry().with(spans).with(warnings);
        tracing::subscriber::set_global_default(subscriber)
            .context("installing the tracing subscriber")?;
        Ok(Telemetry {
            provider: Some(provider),
            export_error,
        })
    }

    /// Exports the spans still buffered and stops the exporters; an error
    /// if any export failed (the collector unreachable, the file full).
    /// Spans that have not ended by now (the caller's own) are not exported.
    pub fn shutdown(mut self) -> Result<()> {
        if let Some(provider) = self.provider.take() {
            provider
                .shutdown_with_timeout(SHUTDOWN_TIMEOUT)
                .context("exporting the last traces")?;
        }
        match self.export_error.lock().map(|mut e| e.take()) {
            Ok(Some(error)) => Err(anyhow::anyhow!("some traces were not exported: {error}")),
            _ => Ok(()),
        }
    }
}

impl Drop for Telemetry {
    /// Flushes on paths that skip [`Telemetry::shutdown`] (a panic in `main`).
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT);
        }
    }
}

/// An exporter that keeps the first error of its inner exporter.
#[derive(Debug)]
struct ErrorKeeping<E> {
    inner: E,
    first_error: ExportError,
}

impl<E: SpanExporter> ErrorKeeping<E> {
    fn new(inner: E, first_error: &ExportError) -> Self {
        ErrorKeeping {
            inner,
            first_error: Arc::clone(first_error),
        }
    }
}

impl<E: SpanExporter> SpanExporter for ErrorKeeping<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let exported = self.inner.export(batch);
        let first_error = Arc::clone(&self.first_error);
        async move {
            let result = exported.await;
            if let Err(error) = &result {
                if let Ok(mut slot) = first_error.lock() {
                    slot.get_or_insert_with(|| error.to_string());
                }
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Service `clipflow`, its version, the subcommand and the command line.
fn resource(command: &str) -> Resource {
    let command_args: Vec<StringValue> = std::env::args().map(StringValue::from).collect();
    Resource::builder()
        .with_service_name("clipflow")
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("clipflow.command", command.to_string()),
            KeyValue::new(
                "process.command_args",
                Value::Array(Array::String(command_args)),
            ),
        ])
        .build()
}

/// Writes each span as one JSON object per line: `name`, `trace_id`,
/// `span_id`, `parent_span_id` (null for a root), `kind`, start and end
/// times (`start_time_unix_nano`, `end_time_unix_nano`), `attributes`,
/// `status` and the `resource` attributes.
#[derive(Debug)]
struct JsonLinesExporter {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
    resource: Map<String, serde_json::Value>,
}

impl JsonLinesExporter {
    fn create(path: &Path) -> Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("--otel-file: cannot create {}", path.display()))?;
        Ok(JsonLinesExporter {
            path: path.to_path_buf(),
            out: Mutex::new(BufWriter::new(file)),
            resource: Map::new(),
        })
    }

    fn write_batch(&self, batch: &[SpanData]) -> std::io::Result<()> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| std::io::Error::other("an earlier write panicked"))?;
        for span in batch {
            serde_json::to_writer(&mut *out, &self.span_json(span))?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    fn span_json(&self, span: &SpanData) -> serde_json::Value {
        let parent =
            (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_string());
        let status = match &span.status {
            Status::Unset => json!({ "code": "unset" }),
            Status::Ok => json!({ "code": "ok" }),
            Status::Error { description } => {
                json!({ "code": "error", "message": description.to_string() })
            }
        };
        json!({
            "name": span.name,
            "trace_id": span.span_context.trace_id().to_string(),
            "span_id": span.span_context.span_id().to_string(),
            "parent_span_id": parent,
            "kind": format!("{:?}", span.span_kind).to_lowercase(),
            "start_time_unix_nano": unix_nanos(span.start_time),
            "end_time_unix_nano": unix_nanos(span.end_time),
            "attributes": attributes_json(&span.attributes),
            "status": status,
            "resource": self.resource,
        })
    }
}

impl SpanExporter for JsonLinesExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let result = self.write_batch(&batch).map_err(|error| {
            OTelSdkError::InternalFailure(format!(
                "--otel-file: writing {}: {error}",
                self.path.display()
            ))
        });
        std::future::ready(result)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource
            .iter()
            .map(|(key, value)| (key.to_string(), value_json(value)))
            .collect();
    }
}

fn attributes_json(attributes: &[KeyValue]) -> Map<String, serde_json::Value> {
    attributes
        .iter()
        .map(|kv| (kv.key.to_string(), value_json(&kv.value)))
        .collect()
}

fn value_json(value: &Value) -> serde_json::Value {
    match value {
        Value::Bool(b) => json!(b),
        Value::I64(i) => json!(i),
        Value::F64(f) => json!(f),
        Value::Array(Array::Bool(values)) => json!(values),
        Value::Array(Array::I64(values)) => json!(values),
        Value::Array(Array::F64(values)) => json!(values),
        Value::Array(Array::String(values)) => {
            json!(values.iter().map(StringValue::as_str).collect::<Vec<_>>())
        }
        other => json!(other.as_str()),
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}
