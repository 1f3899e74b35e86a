// Declarations only: the part of gloo's context.h that libtorch's
// ProcessGroupGloo.hpp names. clipflow never touches a gloo::Context; libtorch
// holds them behind shared_ptr, so their layout does not matter here.
#pragma once

#include <chrono>

namespace gloo {

class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};

} // namespace gloo
