// Shared by the build scripts of every package that links libtorch
// (`include!`d, so each package's tests and binaries get the same flags).
//
// - `--no-as-needed -ltorch_cuda`: the linker otherwise drops libtorch_cuda.so
//   (nothing references it by symbol) and CUDA silently reads as unavailable.
// - a RUNPATH to the torch/lib the build used, so binaries run without
//   LD_LIBRARY_PATH; RUNPATH (not RPATH) so LD_LIBRARY_PATH can still point a
//   binary at another torch 2.11.0 build (a GPU host's own cu130 wheel).

fn torch_lib_dir() -> std::path::PathBuf {
    println!("cargo:rerun-if-env-changed=CLIPFLOW_TORCH_LIB");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("CLIPFLOW_TORCH_LIB") {
        return dir.into();
    }
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return std::path::Path::new(&dir).join("lib");
    }
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {python} to find torch: {e}; run scripts/setup.sh"));
    assert!(
        out.status.success(),
        "{python} cannot import torch; run scripts/setup.sh (or set CLIPFLOW_TORCH_LIB)"
    );
    String::from_utf8_lossy(&out.stdout).trim().into()
}

fn link_torch() {
    let lib = torch_lib_dir();
    println!("cargo:rustc-link-search=native={}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-ltorch");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
