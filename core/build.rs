//! Build script of clipflow-core: libtorch link flags for its tests (see
//! build/torch_link.rs), the C++ shim in shim/, compiled against the same
//! libtorch headers tch uses, and OpenCLIP's BPE vocabulary, copied from the
//! installed open_clip package for the tokenizer to embed.
include!("../build/torch_link.rs");

fn main() {
    link_torch();
    build_shim();
    copy_bpe_vocab();
}

/// The BPE merge list that ships with OpenCLIP.
const BPE_VOCAB_FILE: &str = "bpe_simple_vocab_16e6.txt.gz";

/// Copies OpenCLIP's BPE vocabulary into OUT_DIR, where
/// core/src/tokenizer/clip_bpe.rs includes it: a built binary needs no
/// Python package to tokenize. Read from the open_clip package of the
/// Python environment `CLIPFLOW_VENV` names, else of `python3`.
fn copy_bpe_vocab() {
    println!("cargo:rerun-if-env-changed=CLIPFLOW_VENV");
    let package = open_clip_dir();
    let source = package.join(BPE_VOCAB_FILE);
    println!("cargo:rerun-if-changed={}", source.display());
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::copy(&source, out_dir.join(BPE_VOCAB_FILE)).unwrap_or_else(|error| {
        panic!(
            "copying OpenCLIP's BPE vocabulary {}: {error}; run scripts/setup.sh, which \
             installs open_clip_torch",
            source.display()
        )
    });
}

/// The installed `open_clip` package's folder.
fn open_clip_dir() -> std::path::PathBuf {
    if let Ok(venv) = std::env::var("CLIPFLOW_VENV") {
        let lib = std::path::Path::new(&venv).join("lib");
        let found = std::fs::read_dir(&lib).ok().and_then(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("python"))
                .map(|entry| entry.path().join("site-packages/open_clip"))
                .find(|package| package.join(BPE_VOCAB_FILE).is_file())
        });
        if let Some(package) = found {
            return package;
        }
    }
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('open_clip').origin))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("running {python} to find open_clip: {e}; run scripts/setup.sh"));
    assert!(
        out.status.success(),
        "{python} cannot find the open_clip package (open_clip_torch), whose BPE vocabulary \
         clipflow embeds; run scripts/setup.sh (or set CLIPFLOW_VENV)"
    );
    String::from_utf8_lossy(&out.stdout).trim().into()
}

/// Compiles shim/*.cpp into a static library that core/src/shim.rs,
/// core/src/activation_checkpoint.rs and core/src/distributed.rs bind.
fn build_shim() {
    let torch_include = torch_lib_dir().join("..").join("include");
    println!("cargo:rerun-if-changed=shim");
    let mut build = cc::Build::new();
    let nccl = nccl_includes();
    match &nccl {
        Some(includes) => {
            build
                .file("shim/distributed_nccl.cpp")
                .define("USE_C10D_NCCL", None);
            for dir in includes {
                build.include(dir);
            }
        }
        None => {
            println!(
                "cargo:warning=NCCL's or CUDA's headers are missing beside torch: building \
                 without the NCCL backend (run scripts/setup.sh)"
            );
            build.file("shim/nccl_missing.cpp");
        }
    }
    build
        .cpp(true)
        .file("shim/shim.cpp")
        .file("shim/checkpoint.cpp")
        .file("shim/distributed.cpp")
        .include(&torch_include)
        .include(torch_include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        // gloo's headers are not in the wheel: declarations stand in for them
        // (shim/distributed.cpp says why that is enough).
        .include("shim/gloo_declarations")
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("clipflow_shim");
    // The shim calls into libtorch; name the libraries after the static
    // archive so the linker resolves its symbols.
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if nccl.is_some() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}

/// The include folders of nccl.h and the CUDA runtime headers, from the
/// NVIDIA wheels installed beside torch (nvidia-nccl-cu13, which torch pulls
/// in, and nvidia-cuda-crt and nvidia-cuda-cccl, which setup.sh adds), when
/// all are there.
fn nccl_includes() -> Option<Vec<std::path::PathBuf>> {
    let nvidia = torch_lib_dir().join("../../nvidia");
    let nccl = nvidia.join("nccl/include");
    let cuda = nvidia.join("cu13/include");
    let present = [
        nccl.join("nccl.h"),
        cuda.join("cuda_runtime_api.h"),
        cuda.join("crt/host_defines.h"),
    ]
    .iter()
    .all(|header| header.exists());
    present.then(|| vec![cuda, nccl])
}
