//! Build script of clipflow-actors: libtorch link flags for its tests (see
//! build/torch_link.rs); the batcher builds tensors, so they link libtorch.
include!("../build/torch_link.rs");

fn main() {
    link_torch();
}
