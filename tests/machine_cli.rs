//! What clipflow says of the machine it runs on: `clipflow --version` names
//! the libtorch clipflow was built against (torch's own version, as the
//! Python package reports it) and whether CUDA and NCCL are usable (as
//! torch sees its devices); `clipflow doctor` names the libtorch folder it
//! loaded and fails, naming the check, when `--logs` cannot be written.

mod common;

use std::process::Command;

#[test]
fn version_names_libtorch_and_whether_cuda_and_nccl_are_usable() {
    let out = Command::new(common::clipflow_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!("clipflow {}", env!("CARGO_PKG_VERSION")),
        "{text}"
    );
    let torch = common::run_oracle(
        "import torch\nprint(torch.__version__.split('+')[0])\nprint(torch.cuda.is_available())\n",
        &[],
    );
    let mut torch = torch.lines();
    let (version, cuda) = (torch.next().unwrap(), torch.next().unwrap() == "True");
    assert_eq!(lines[1], format!("libtorch {version}"), "{text}");
    assert_eq!(lines[2].starts_with("CUDA: available"), cuda, "{text}");
    let nccl = lines[3];
    assert!(nccl.starts_with("NCCL: "), "{text}");
    assert_eq!(
        nccl == "NCCL: usable",
        cuda && !nccl.contains("not built"),
        "{text}"
    );
}

#[test]
fn doctor_checks_the_machine_and_fails_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let out = Command::new(common::clipflow_bin())
        .arg("doctor")
        .arg("--logs")
        .arg(&logs)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let torch_lib = common::run_oracle(
        "import os, torch\nprint(os.path.realpath(os.path.join(os.path.dirname(torch.__file__), 'lib')))\n",
        &[],
    );
    let loaded = text
        .lines()
        .find_map(|line| line.split(": loaded from ").nth(1))
        .unwrap_or_else(|| panic!("no libtorch line in:\n{text}"));
    let loaded = std::fs::canonicalize(loaded).unwrap();
    assert_eq!(loaded.to_str().unwrap(), torch_lib.trim(), "{text}");
    assert!(
        text.contains(&format!("--logs {}: writable", logs.display())),
        "{text}"
    );
    assert!(logs.is_dir(), "doctor creates the logs folder it checks");
    assert!(text.contains("free disk under --logs: "), "{text}");

    // A --logs under a file cannot be created.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = Command::new(common::clipflow_bin())
        .arg("doctor")
        .arg("--logs")
        .arg(file.join("logs"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("logs: NOT writable"), "{text}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("clipflow doctor: --logs failed"),
        "{stderr}"
    );
}
