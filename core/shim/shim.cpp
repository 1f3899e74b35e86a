// clipflow's C++ shim: the few libtorch entry points that tch 0.24 does not
// bind, exposed as `extern "C"` functions for core/src/shim.rs.
//
// - autocast state per device type (enabled flag and lower-precision dtype),
//   which tch only exposes for CUDA and without a dtype;
// - the fused AdamW kernel (`at::_fused_adamw_`), which tch's generator skips;
// - a device's free and total memory (its caching allocator's
//   `getMemoryInfo`, what `torch.cuda.mem_get_info` reports).
//
// Every function reports C++ exceptions as errors.h describes.
// Activation checkpointing lives in checkpoint.cpp.
// Tensors arrive as tch's handles, which are `at::Tensor*` (see torch-sys's
// libtch/torch_api.h).

#include <ATen/DeviceAccelerator.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_fused_adamw.h>
#include <torch/headeronly/version.h>

#include <vector>

#include "errors.h"
#include "tensors.h"

using clipflow_shim::catch_errors;

namespace {

c10::DeviceType autocast_device_type(int device_type) {
  const auto type = static_cast<c10::DeviceType>(device_type);
  TORCH_CHECK(at::autocast::is_autocast_available(type),
              "autocast is not available for device type ", type);
  return type;
}

} // namespace

extern "C" {

void clipflow_shim_free_error(char *message) { std::free(message); }

const char *clipflow_torch_version() { return TORCH_VERSION; }

char *clipflow_device_memory(int device_type, int device_index, size_t *free,
                             size_t *total) {
  return catch_errors([&] {
    const auto type = static_cast<c10::DeviceType>(device_type);
    TORCH_CHECK(at::accelerator::isAccelerator(type), type,
                " is not an accelerator");
    const auto [free_bytes, total_bytes] =
        at::getDeviceAllocator(type)->getMemoryInfo(
            static_cast<c10::DeviceIndex>(device_index));
    *free = free_bytes;
    *total = total_bytes;
  });
}

char *clipflow_autocast_is_enabled(int device_type, bool *enabled) {
  return catch_errors([&] {
    *enabled = at::autocast::is_autocast_enabled(
        autocast_device_type(device_type));
  });
}

char *clipflow_autocast_set_enabled(int device_type, bool enabled) {
  return catch_errors([&] {
    at::autocast::set_autocast_enabled(autocast_device_type(device_type),
                                       enabled);
  });
}

char *clipflow_autocast_dtype(int device_type, int *scalar_type) {
  return catch_errors([&] {
    *scalar_type = static_cast<int>(
        at::autocast::get_autocast_dtype(autocast_device_type(device_type)));
  });
}

char *clipflow_autocast_set_dtype(int device_type, int scalar_type) {
  return catch_errors([&] {
    at::autocast::set_autocast_dtype(
        autocast_device_type(device_type),
        static_cast<c10::ScalarType>(scalar_type));
  });
}

// Nesting depth of autocast regions on this thread, as torch.autocast keeps
// it: the cast cache is cleared when the outermost region exits.
char *clipflow_autocast_increment_nesting() {
  return catch_errors([] { at::autocast::increment_nesting(); });
}

char *clipflow_autocast_decrement_nesting(int *depth) {
  return catch_errors([&] { *depth = at::autocast::decrement_nesting(); });
}

char *clipflow_autocast_clear_cache() {
  return catch_errors([] { at::autocast::clear_cache(); });
}

// One AdamW step over `count` parameters, as torch.optim.AdamW(fused=True)
// does it: advance each step counter by one, then run the fused kernel
// (no amsgrad, no maximize, no gradient scaler), outside autograd.
char *clipflow_fused_adamw_step(at::Tensor *const *params,
                                at::Tensor *const *grads,
                                at::Tensor *const *exp_avgs,
                                at::Tensor *const *exp_avg_sqs,
                                at::Tensor *const *state_steps, size_t count,
                                double lr, double beta1, double beta2,
                                double weight_decay, double eps) {
  return catch_errors([&] {
    at::NoGradGuard no_grad;
    const auto steps = clipflow_shim::tensor_vector(state_steps, count);
    at::_foreach_add_(steps, 1);
    at::_fused_adamw_(clipflow_shim::tensor_vector(params, count),
                      clipflow_shim::tensor_vector(grads, count),
                      clipflow_shim::tensor_vector(exp_avgs, count),
                      clipflow_shim::tensor_vector(exp_avg_sqs, count),
                      /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2,
                      weight_decay, eps, /*amsgrad=*/false,
                      /*maximize=*/false);
  });
}

} // extern "C"
