//! `clipflow doctor [--logs DIR]`: checks a machine before a long run and
//! prints one line per check: the libtorch clipflow loaded (its version and
//! folder), the CUDA devices torch sees (with their free memory), whether NCCL is usable, the
//! HuggingFace cache, whether the `--logs` folder can be written, and the
//! free disk under it. It fails (exit status 1) when the logs cannot be
//! written or the disk under them is nearly full.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

/// Less free disk than this under `--logs` fails the check: a run's
/// checkpoints would not fit.
const MIN_FREE_BYTES: u64 = 1 << 30;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The folder a run will write to (`clipflow train --logs`).
    #[arg(long, default_value = "./logs")]
    pub logs: PathBuf,
}

pub fn run(args: &DoctorArgs) -> Result<()> {
    let mut failed = Vec::new();
    println!(
        "libtorch {}: loaded from {}",
        clipflow_core::shim::torch_version(),
        loaded_libtorch().map_or("an unknown folder".into(), |p| p.display().to_string())
    );
    let devices = cuda_devices();
    match devices {
        0 => println!("CUDA: no device (training runs on the CPU)"),
        n => println!("CUDA: {n} device(s), cuda:0 to cuda:{}", n - 1),
    }
    for index in 0..devices {
        let device = tch::Device::Cuda(index as usize);
        match clipflow_core::shim::device_memory(device) {
            Ok(Some(memory)) => println!(
                "  cuda:{index}: {:.1} GiB free of {:.1} GiB",
                gib(memory.free_bytes),
                gib(memory.total_bytes)
            ),
            Ok(None) => {}
            Err(error) => println!("  cuda:{index}: memory unknown: {error:#}"),
        }
    }
    println!("NCCL: {}", nccl_state(devices));
    let hub = clipflow_core::hf_hub::HubCache::locate(None)
        .root()
        .to_path_buf();
    let state = if hub.is_dir() { "present" } else { "absent" };
    println!("HuggingFace cache: {} ({state})", hub.display());
    match check_writable(&args.logs) {
        Ok(()) => println!("--logs {}: writable", args.logs.display()),
        Err(error) => {
            println!("--logs {}: NOT writable: {error:#}", args.logs.display());
            failed.push("--logs");
        }
    }
    match free_bytes(&args.logs) {
        Ok(free) if free >= MIN_FREE_BYTES => {
            println!("free disk under --logs: {:.1} GiB", gib(free))
        }
        Ok(free) => {
            println!(
                "free disk under --logs: {:.2} GiB, LESS than {:.0} GiB",
                gib(free),
                gib(MIN_FREE_BYTES)
            );
            failed.push("free disk");
        }
        Err(error) => {
            println!("free disk under --logs: unknown: {error:#}");
            failed.push("free disk");
        }
    }
    if !failed.is_empty() {
        bail!("clipflow doctor: {} failed", failed.join(", "));
    }
    Ok(())
}

/// The CUDA devices torch sees (none without a GPU or with a CPU-only
/// libtorch).
pub fn cuda_devices() -> i64 {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count()
    } else {
        0
    }
}

/// Whether NCCL is built into this clipflow and usable with `devices`.
pub fn nccl_state(devices: i64) -> &'static str {
    match (clipflow_core::shim::nccl_built(), devices) {
        (false, _) => "not built (NCCL's headers were missing when clipflow was built)",
        (true, 0) => "built, not usable without a CUDA device",
        (true, _) => "usable",
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// The folder of the libtorch_cpu.so this process mapped.
fn loaded_libtorch() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().last())
        .find(|path| path.ends_with("/libtorch_cpu.so"))
        .and_then(|path| Path::new(path).parent().map(Path::to_path_buf))
}

/// Creates `logs` if needed, and a file in it, which it then removes.
fn check_writable(logs: &Path) -> Result<()> {
    std::fs::create_dir_all(logs)?;
    let probe = tempfile::NamedTempFile::new_in(logs)?;
    probe.close()?;
    Ok(())
}

/// Free bytes for an unprivileged user on the filesystem of `path` (or of
/// its nearest existing parent).
fn free_bytes(path: &Path) -> Result<u64> {
    let existing = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("."));
    let existing = if existing.as_os_str().is_empty() {
        Path::new(".")
    } else {
        existing
    };
    let c_path = CString::new(existing.as_os_str().as_bytes())?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated path and `stats` a writable
    // statvfs, as the call requires.
    let status = unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) };
    if status != 0 {
        bail!(
            "statvfs {}: {}",
            existing.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(stats.f_bavail as u64 * stats.f_frsize as u64)
}
