//! Link flags for clipflow-core's tests (see build/torch_link.rs).
include!("../build/torch_link.rs");

fn main() {
    link_torch();
}
