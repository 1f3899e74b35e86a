// The NCCL backend of clipflow's process groups: libtorch's
// ProcessGroupNCCL (exported by libtorch_cuda.so), compiled against the
// nccl.h and CUDA runtime headers of the wheels torch pulls in. The layout
// checks make a torch or NCCL upgrade that changes it fail the build.

#include "nccl_backend.h"

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

static_assert(sizeof(ncclConfig_t) == 80,
              "ncclConfig_t changed size: pin the NCCL torch was built with");

namespace clipflow_shim {

c10::intrusive_ptr<c10d::Backend>
make_nccl_backend(const c10::intrusive_ptr<c10d::Store> &store, int rank,
                  int world_size, std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size,
                                                     options);
}

bool nccl_backend_built() { return true; }

} // namespace clipflow_shim
