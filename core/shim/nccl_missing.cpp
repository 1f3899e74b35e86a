// Stands in for distributed_nccl.cpp in a build without NCCL's and CUDA's
// headers: asking for NCCL is then a clear error.

#include "nccl_backend.h"

#include <c10/util/Exception.h>

namespace clipflow_shim {

c10::intrusive_ptr<c10d::Backend>
make_nccl_backend(const c10::intrusive_ptr<c10d::Store> &, int, int,
                  std::chrono::milliseconds) {
  TORCH_CHECK(false, "this clipflow was built without NCCL (nccl.h and the "
                     "CUDA runtime headers were not found): run "
                     "scripts/setup.sh, rebuild, or use --dist-backend gloo");
}

bool nccl_backend_built() { return false; }

} // namespace clipflow_shim
