//! Build script of clipflow-core: libtorch link flags for its tests (see
//! build/torch_link.rs) and the C++ shim in shim/, compiled against the same
//! libtorch headers tch uses.
include!("../build/torch_link.rs");

fn main() {
    link_torch();
    build_shim();
}

/// Compiles shim/*.cpp into a static library that core/src/shim.rs,
/// core/src/checkpoint.rs and core/src/distributed.rs bind.
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
