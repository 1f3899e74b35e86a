//! Build script of clipflow-core: libtorch link flags for its tests (see
//! build/torch_link.rs) and the C++ shim in shim/, compiled against the same
//! libtorch headers tch uses.
include!("../build/torch_link.rs");

fn main() {
    link_torch();
    build_shim();
}

/// Compiles shim/*.cpp into a static library that core/src/shim.rs and
/// core/src/checkpoint.rs bind.
fn build_shim() {
    let torch_include = torch_lib_dir().join("..").join("include");
    println!("cargo:rerun-if-changed=shim");
    cc::Build::new()
        .cpp(true)
        .file("shim/shim.cpp")
        .file("shim/checkpoint.cpp")
        .include(&torch_include)
        .include(torch_include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("clipflow_shim");
    // The shim calls into libtorch; name the libraries after the static
    // archive so the linker resolves its symbols.
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
