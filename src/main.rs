//! The `clipflow` command: a drop-in for `python -m open_clip_train.main`
//! plus tools around it (`quickstart`, `embed`, `tokenize`, `convert`,
//! `models`, `run`, `check`, `bench`, `make-scenes`, `doctor`), and
//! `--version` with the libtorch it was built against.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use clipflow::commands::{
    bench, check, convert, doctor, embed, make_scenes, models, pretrained, quickstart, run,
    tokenize, train,
};
use clipflow::telemetry::{Telemetry, TelemetryArgs};

#[derive(Parser)]
#[command(
    name = "clipflow",
    version,
    about = "CLIP training as a streaming dataflow of actors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

#[derive(Subcommand)]
enum Command {
    /// The main job on an embedded default: render a small dataset, train a
    /// small CLIP on it (CPU, a few minutes), report zero-shot accuracy.
    Quickstart(quickstart::QuickstartArgs),
    /// Train a model with open_clip_train.main's flags.
    Train(Box<train::TrainCommand>),
    /// Images and captions to OpenCLIP's encode_image / encode_text features.
    Embed(embed::EmbedArgs),
    /// Captions on stdin to token ids on stdout, one line each.
    Tokenize(tokenize::TokenizeArgs),
    /// Rewrite a weights file (.safetensors, OpenCLIP .pt/.bin) as safetensors.
    Convert(convert::ConvertArgs),
    /// List the model architectures and whether clipflow builds them yet.
    Models,
    /// List OpenCLIP's pretrained tags and whether the HuggingFace hub cache
    /// has their weights.
    Pretrained(pretrained::PretrainedArgs),
    /// Run the pipeline a topology file describes (e.g. topologies/demo.toml).
    Run(run::RunArgs),
    /// Validate a topology file without running it.
    Check(run::RunArgs),
    /// Benchmarks: `bench data` times the loading path alone.
    Bench(bench::BenchArgs),
    /// Write the quickstart's dataset: rendered shapes with captions as
    /// WebDataset shards, and a held-out zero-shot set.
    MakeScenes(make_scenes::MakeScenesArgs),
    /// Check this machine before a long run: libtorch, CUDA devices, NCCL,
    /// the HuggingFace cache, write access and free disk under --logs.
    Doctor(doctor::DoctorArgs),
}

/// True when stdout's reader went away (`clipflow models | head`): not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

impl Command {
    /// The subcommand as typed: names the root span and the trace's resource.
    fn name(&self) -> &'static str {
        match self {
            Command::Quickstart(_) => "quickstart",
            Command::Train(_) => "train",
            Command::Embed(_) => "embed",
            Command::Tokenize(_) => "tokenize",
            Command::Convert(_) => "convert",
            Command::Models => "models",
            Command::Pretrained(_) => "pretrained",
            Command::Run(_) => "run",
            Command::Check(_) => "check",
            Command::Bench(_) => "bench",
            Command::MakeScenes(_) => "make-scenes",
            Command::Doctor(_) => "doctor",
        }
    }

    fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Quickstart(args) => quickstart::run(&args),
            Command::Train(args) => train::run(*args),
            Command::Embed(args) => embed::run(&args),
            Command::Tokenize(args) => tokenize::run(&args),
            Command::Convert(args) => convert::run(&args),
            Command::Models => models::run(),
            Command::Pretrained(args) => pretrained::run(&args),
            Command::Run(args) => run::run(&args),
            Command::Check(args) => check::run(&args),
            Command::Bench(args) => bench::run(args),
            Command::MakeScenes(args) => make_scenes::run(&args),
            Command::Doctor(args) => doctor::run(&args),
        }
    }
}

/// Runs the command inside a root span `clipflow <command>`, which ends with
/// an error status when the command fails.
fn run_traced(command: Command) -> anyhow::Result<()> {
    let span = tracing::info_span!(
        "command",
        otel.name = %format!("clipflow {}", command.name()),
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let result = span.in_scope(|| command.run());
    if let Err(err) = &result {
        span.record("otel.status_code", "error");
        span.record("otel.status_description", format!("{err:#}"));
    }
    result
}

/// What `clipflow --version` prints: clipflow's version, the libtorch it
/// was built against, and whether CUDA and NCCL are usable here.
fn long_version() -> String {
    let devices = doctor::cuda_devices();
    let cuda = match devices {
        0 => "not available (no CUDA device, or a CPU-only libtorch)".to_string(),
        n => format!("available, {n} device(s)"),
    };
    let nccl = doctor::nccl_state(devices);
    format!(
        "{}\nlibtorch {}\nCUDA: {cuda}\nNCCL: {nccl}",
        env!("CARGO_PKG_VERSION"),
        clipflow_core::shim::torch_version()
    )
}

fn main() {
    let mut command = Cli::command();
    // Only asked for is CUDA looked at (it takes a while on a GPU host).
    if std::env::args().any(|arg| arg == "--version") {
        let text: &'static str = Box::leak(long_version().into_boxed_str());
        command = command.long_version(text);
    }
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    let telemetry = match Telemetry::start(&cli.telemetry, cli.command.name()) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    };
    let result = run_traced(cli.command);
    // Flushed before any exit, so a failed run's spans are exported too.
    if let Err(err) = telemetry.shutdown() {
        eprintln!("clipflow: warning: {err:#}");
    }
    if let Err(err) = result {
        if !is_broken_pipe(&err) {
            eprintln!("error: {err:#}");
            std::process::exit(1);
        }
    }
}
