//! `clipflow --version` says which libtorch clipflow was built against
//! (torch's own version, as the Python package reports it) and whether CUDA
//! and NCCL are usable on this machine (as torch sees its devices).

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
