//! Link flags for the clipflow binary and its tests (see build/torch_link.rs).
include!("build/torch_link.rs");

fn main() {
    link_torch();
}
