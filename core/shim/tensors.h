// Shared by the shim's entry points: the tensors behind an array of tensor
// handles that Rust passes, as a vector libtorch's functions take.

#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <vector>

namespace clipflow_shim {

inline std::vector<at::Tensor> tensor_vector(const at::Tensor *const *tensors,
                                             size_t count) {
  std::vector<at::Tensor> result;
  result.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    result.push_back(*tensors[i]);
  }
  return result;
}

} // namespace clipflow_shim
