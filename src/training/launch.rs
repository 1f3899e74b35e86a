//! Where this process stands in a run of several processes, read from the
//! launcher's environment as OpenCLIP's `init_distributed_device` reads it:
//! torchrun (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`), SLURM's `srun`
//! (`SLURM_PROCID`, `SLURM_LOCALID`, `SLURM_NTASKS`), and MPI launchers, with
//! OpenCLIP's precedence among them; then `--dist-url`, `--dist-backend`
//! and the device each rank drives.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clipflow_core::distributed::{Backend, Rendezvous};
use tch::Device;

/// Where each launcher puts the local rank, the global rank and the world
/// size, in the order OpenCLIP looks.
const LOCAL_RANK_VARIABLES: [&str; 4] = [
    "LOCAL_RANK",
    "MPI_LOCALRANKID",
    "SLURM_LOCALID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
];
const RANK_VARIABLES: [&str; 4] = ["RANK", "PMI_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"];
const WORLD_SIZE_VARIABLES: [&str; 4] = [
    "WORLD_SIZE",
    "PMI_SIZE",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
];

/// How long the rendezvous and each collective may wait for the other
/// ranks (torch's default for gloo), unless `CLIPFLOW_DIST_TIMEOUT`
/// (seconds) says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The flags that shape a launch.
#[derive(Debug, Clone, Copy)]
pub struct DistFlags<'a> {
    /// `--dist-url` (default `env://`).
    pub dist_url: Option<&'a str>,
    /// `--dist-backend` (default nccl for CUDA devices, else gloo).
    pub dist_backend: Option<&'a str>,
    /// `--device`, already resolved to what this host has.
    pub device: Device,
    /// `--no-set-device-rank`.
    pub no_set_device_rank: bool,
}

/// This process's place in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub local_rank: usize,
    pub world_size: usize,
    /// The device this rank trains on: `cuda:LOCAL_RANK` on several ranks
    /// unless `--no-set-device-rank`, as OpenCLIP picks it.
    pub device: Device,
    /// How the ranks meet; `None` when training in one process.
    pub rendezvous: Option<Rendezvous>,
}

impl Launch {
    /// One process, no group.
    pub fn single(device: Device) -> Self {
        Launch {
            rank: 0,
            local_rank: 0,
            world_size: 1,
            device,
            rendezvous: None,
        }
    }

    pub fn distributed(&self) -> bool {
        self.rendezvous.is_some()
    }

    /// OpenCLIP's `is_master`: rank 0, or with `--log-local` each node's
    /// local rank 0.
    pub fn is_master(&self, local: bool) -> bool {
        if local {
            self.local_rank == 0
        } else {
            self.rank == 0
        }
    }

    /// Reads the launch from `env` (a variable's value by name) and the
    /// flags.
    pub fn from_env(env: impl Fn(&str) -> Option<String>, flags: &DistFlags) -> Result<Self> {
        let number = |name: &str| -> Result<Option<usize>> {
            env(name)
                .map(|value| {
                    value.trim().parse::<usize>().with_context(|| {
                        format!("the launch variable {name}={value:?} is not a whole number")
                    })
                })
                .transpose()
        };
        let first = |names: &[&str]| -> Result<Option<usize>> {
            for name in names {
                if let Some(value) = number(name)? {
                    return Ok(Some(value));
                }
            }
            Ok(None)
        };
        // OpenCLIP's is_using_distributed: WORLD_SIZE decides when it is
        // set, else SLURM_NTASKS.
        let distributed = match number("WORLD_SIZE")? {
            Some(size) => size > 1,
            None => number("SLURM_NTASKS")?.is_some_and(|n| n > 1),
        };
        if !distributed {
            return Ok(Launch::single(flags.device));
        }
        let local_rank = first(&LOCAL_RANK_VARIABLES)?.unwrap_or(0);
        let rank = first(&RANK_VARIABLES)?.unwrap_or(0);
        let world_size = first(&WORLD_SIZE_VARIABLES)?.unwrap_or(1);
        if rank >= world_size {
            bail!("the launch says rank {rank} of a world of {world_size} processes");
        }
        let timeout = match env("CLIPFLOW_DIST_TIMEOUT") {
            Some(seconds) => Duration::from_secs_f64(
                seconds
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0)
                    .with_context(|| {
                        format!(
                            "CLIPFLOW_DIST_TIMEOUT={seconds:?} is not a positive number of seconds"
                        )
                    })?,
            ),
            None => DEFAULT_TIMEOUT,
        };
        let url = flags.dist_url.unwrap_or("env://");
        let (host, port, store_is_hosted) = if url == "env://" {
            let master = |name: &str| {
                env(name).filter(|v| !v.trim().is_empty()).with_context(|| {
                    format!(
                        "--dist-url env:// needs {name} (torchrun sets it; under srun export \
                         MASTER_ADDR and MASTER_PORT, as OpenCLIP's SLURM example does)"
                    )
                })
            };
            let host = master("MASTER_ADDR")?;
            let port_text = master("MASTER_PORT")?;
            let port = port_text
                .trim()
                .parse::<u16>()
                .with_context(|| format!("MASTER_PORT={port_text:?} is not a port number"))?;
            // torch's env:// rendezvous: the agent hosts the store when
            // this is exactly "True".
            let hosted = env("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True");
            (host.trim().to_string(), port, hosted)
        } else if let Some(address) = url.strip_prefix("tcp://") {
            let (host, port) = address
                .rsplit_once(':')
                .with_context(|| format!("--dist-url {url}: give tcp://HOST:PORT"))?;
            let port = port
                .parse::<u16>()
                .with_context(|| format!("--dist-url {url}: {port:?} is not a port number"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            (host.to_string(), port, false)
        } else {
            bail!("--dist-url {url}: clipflow rendezvouses through env:// or tcp://HOST:PORT");
        };
        let device = match flags.device {
            Device::Cuda(_) if !flags.no_set_device_rank => Device::Cuda(local_rank),
            other => other,
        };
        Ok(Launch {
            rank,
            local_rank,
            world_size,
            device,
            rendezvous: Some(Rendezvous {
                host,
                port,
                store_is_hosted,
                rank,
                world_size,
                timeout,
                backend: backend(device, flags.dist_backend)?,
            }),
        })
    }
}

/// `--dist-backend`, or its default for the device, checked against it.
fn backend(device: Device, dist_backend: Option<&str>) -> Result<Backend> {
    let default = match device {
        Device::Cuda(_) => "nccl",
        _ => "gloo",
    };
    match (dist_backend.unwrap_or(default), device) {
        ("gloo", Device::Cpu) => Ok(Backend::Gloo),
        ("gloo", other) => bail!(
            "--dist-backend gloo with the device {other:?}: clipflow reduces over gloo on CPU \
             devices only; use --dist-backend nccl on GPUs"
        ),
        ("nccl", _) => Ok(Backend::Nccl),
        (other, _) => bail!("--dist-backend {other}: clipflow knows gloo and nccl"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch_on(vars: &[(&str, &str)], url: Option<&str>, device: Device) -> Result<Launch> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let flags = DistFlags {
            dist_url: url,
            dist_backend: None,
            device,
            no_set_device_rank: false,
        };
        Launch::from_env(
            |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            &flags,
        )
    }

    fn launch(vars: &[(&str, &str)], url: Option<&str>) -> Result<Launch> {
        launch_on(vars, url, Device::Cpu)
    }

    #[test]
    fn one_process_without_launch_variables() {
        let single = Launch::single(Device::Cpu);
        assert_eq!(launch(&[], None).unwrap(), single);
        let slurm_but_one = [("WORLD_SIZE", "1"), ("SLURM_NTASKS", "4")];
        assert_eq!(launch(&slurm_but_one, None).unwrap(), single);
    }

    #[test]
    fn torchrun_variables() {
        let got = launch(
            &[
                ("WORLD_SIZE", "4"),
                ("RANK", "3"),
                ("LOCAL_RANK", "1"),
                ("MASTER_ADDR", "node7"),
                ("MASTER_PORT", "29500"),
                ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ],
            None,
        )
        .unwrap();
        assert_eq!((got.rank, got.local_rank, got.world_size), (3, 1, 4));
        let rendezvous = got.rendezvous.unwrap();
        assert_eq!(
            (rendezvous.host.as_str(), rendezvous.port),
            ("node7", 29500)
        );
        assert!(rendezvous.store_is_hosted);
        assert_eq!(rendezvous.backend, Backend::Gloo);
    }

    #[test]
    fn slurm_variables_and_openclip_precedence() {
        let slurm = [
            ("SLURM_NTASKS", "8"),
            ("SLURM_PROCID", "5"),
            ("SLURM_LOCALID", "1"),
            ("MASTER_ADDR", "head"),
            ("MASTER_PORT", "12802"),
        ];
        let got = launch(&slurm, None).unwrap();
        assert_eq!((got.rank, got.local_rank, got.world_size), (5, 1, 8));
        assert!(!got.rendezvous.unwrap().store_is_hosted);
        // LOCAL_RANK wins over SLURM_LOCALID, PMI_RANK over SLURM_PROCID.
        let mut mixed = slurm.to_vec();
        mixed.extend([("LOCAL_RANK", "0"), ("PMI_RANK", "6")]);
        let got = launch(&mixed, None).unwrap();
        assert_eq!((got.rank, got.local_rank), (6, 0));
        // WORLD_SIZE decides whether the run is distributed at all.
        mixed.push(("WORLD_SIZE", "1"));
        assert_eq!(launch(&mixed, None).unwrap(), Launch::single(Device::Cpu));
    }

    #[test]
    fn tcp_dist_url_and_bad_launches() {
        let base = [("WORLD_SIZE", "2"), ("RANK", "1")];
        let got = launch(&base, Some("tcp://10.1.2.3:23456")).unwrap();
        let rendezvous = got.rendezvous.unwrap();
        assert_eq!(
            (rendezvous.host.as_str(), rendezvous.port),
            ("10.1.2.3", 23456)
        );
        let error = launch(&base, None).unwrap_err().to_string();
        assert!(error.contains("MASTER_ADDR"), "{error}");
        let error = launch(&base, Some("file:///tmp/x"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("--dist-url file:///tmp/x"), "{error}");
        let error = launch(&[("WORLD_SIZE", "2"), ("RANK", "2")], Some("tcp://h:1"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("rank 2 of a world of 2"), "{error}");
        let error = launch(&[("WORLD_SIZE", "two")], None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("WORLD_SIZE=\"two\""), "{error}");
    }

    #[test]
    fn device_and_backend_follow_the_local_rank() {
        let vars = [("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")];
        let url = Some("tcp://h:1");
        let on_gpu = launch_on(&vars, url, Device::Cuda(0)).unwrap();
        assert_eq!(on_gpu.device, Device::Cuda(1));
        assert_eq!(on_gpu.rendezvous.unwrap().backend, Backend::Nccl);
        assert_eq!(
            launch_on(&vars, url, Device::Cpu).unwrap().device,
            Device::Cpu
        );
        assert_eq!(backend(Device::Cpu, Some("nccl")).unwrap(), Backend::Nccl);
        let error = backend(Device::Cpu, Some("mpi")).unwrap_err().to_string();
        assert!(error.contains("--dist-backend mpi"), "{error}");
        let error = backend(Device::Cuda(1), Some("gloo"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("gloo on CPU"), "{error}");
    }
}
