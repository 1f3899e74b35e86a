// The NCCL backend of clipflow's process groups (distributed_nccl.cpp),
// kept apart so that distributed.cpp compiles without CUDA's headers.

#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

namespace clipflow_shim {

// ProcessGroupNCCL over `store` for CUDA tensors, with collectives that
// fail after `timeout`; throws when this machine has no GPU.
c10::intrusive_ptr<c10d::Backend>
make_nccl_backend(const c10::intrusive_ptr<c10d::Store> &store, int rank,
                  int world_size, std::chrono::milliseconds timeout);

// Whether this build has the NCCL backend.
bool nccl_backend_built();

} // namespace clipflow_shim
