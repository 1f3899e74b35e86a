// libtorch's c10d for core/src/distributed.rs: a TCPStore rendezvous, a
// process group over ProcessGroupGloo for CPU tensors and, when asked,
// ProcessGroupNCCL for CUDA tensors (nccl_backend.h), the collectives the
// losses and the trainer use, and DDP's gradient Reducer (bucketed
// all-reduce fired by autograd hooks during backward), an all-reduce inside
// autograd (synchronised batch norm's statistics), all as `extern "C"`
// functions. Every function reports C++ exceptions as errors.h describes.
//
// The wheel ships c10d's headers but not gloo's; the declaration-only headers
// in gloo_declarations/ stand in for them. ProcessGroupGloo keeps gloo types
// behind pointers only, so its layout does not depend on them; the size
// checks below make a torch upgrade that changes it fail the build instead
// of corrupting memory. Nothing here touches gloo's own types.

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"
#include "nccl_backend.h"
#include "tensors.h"

using clipflow_shim::catch_errors;
using clipflow_shim::tensor_vector;

static_assert(sizeof(c10d::ProcessGroupGloo) == 488,
              "ProcessGroupGloo's layout changed: check the torch version");
static_assert(sizeof(c10d::ProcessGroupGloo::Options) == 176,
              "ProcessGroupGloo::Options's layout changed: check the torch "
              "version");

namespace {

// Collectives fail instead of waiting past this.
struct ProcessGroupHandle {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  std::chrono::milliseconds timeout;
};

void wait(const c10::intrusive_ptr<c10d::Work> &work,
          std::chrono::milliseconds timeout) {
  work->wait(timeout);
}

// A contiguous copy of `tensor` summed over the ranks.
at::Tensor summed_over_ranks(const c10::intrusive_ptr<c10d::ProcessGroup> &group,
                             const at::Tensor &tensor,
                             std::chrono::milliseconds timeout) {
  std::vector<at::Tensor> tensors{tensor.clone(at::MemoryFormat::Contiguous)};
  wait(group->allreduce(tensors), timeout);
  return tensors[0];
}

// torch.distributed.nn.functional.all_reduce: the sum over ranks, whose
// backward sums the incoming gradient over the ranks too. The node keeps
// the group alive until it is gone.
struct AllReduceSumWithGrad
    : public torch::autograd::Function<AllReduceSumWithGrad> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx,
                            const at::Tensor &input,
                            const ProcessGroupHandle *handle) {
    ctx->saved_data["group"] = c10::IValue::make_capsule(
        c10::intrusive_ptr<torch::CustomClassHolder>(handle->group));
    ctx->saved_data["timeout_ms"] =
        static_cast<int64_t>(handle->timeout.count());
    return summed_over_ranks(handle->group, input, handle->timeout);
  }

  static torch::autograd::variable_list
  backward(torch::autograd::AutogradContext *ctx,
           torch::autograd::variable_list grad_outputs) {
    const auto group = c10::static_intrusive_pointer_cast<c10d::ProcessGroup>(
        ctx->saved_data["group"].toCapsule());
    const std::chrono::milliseconds timeout(
        ctx->saved_data["timeout_ms"].toInt());
    return {summed_over_ranks(group, grad_outputs[0], timeout), at::Tensor()};
  }
};

} // namespace

extern "C" {

bool clipflow_nccl_built() { return clipflow_shim::nccl_backend_built(); }

typedef struct ProcessGroupHandle clipflow_process_group;
typedef c10d::Reducer clipflow_reducer;

// Joins the group of `world_size` ranks that meet at the TCPStore on
// host:port, as torch.distributed.init_process_group("env://") does: rank 0
// hosts the store unless `store_is_hosted` (torchrun's agent already hosts
// it), every rank connects, then the gloo backend rendezvouses through the
// store under the prefixes torch uses ("default_pg/0/"). CPU tensors go
// through gloo; with `nccl`, CUDA tensors go through NCCL.
char *clipflow_process_group_new(const char *host, uint16_t port,
                                 bool store_is_hosted, int rank,
                                 int world_size, int64_t timeout_ms,
                                 bool nccl, clipflow_process_group **out) {
  return catch_errors([&] {
    const auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions options;
    options.port = port;
    options.isServer = rank == 0 && !store_is_hosted;
    options.numWorkers = world_size;
    options.waitWorkers = false;
    options.timeout = timeout;
    options.multiTenant = true;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>(
            "0/", c10::make_intrusive<c10d::PrefixStore>("default_pg", tcp));

    auto gloo_options = c10d::ProcessGroupGloo::Options::create(timeout);
    gloo_options->devices.push_back(
        c10d::ProcessGroupGloo::createDefaultDevice());
    gloo_options->threads = 2;
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("cpu/", store), rank,
        world_size, gloo_options);

    auto group =
        c10::make_intrusive<c10d::ProcessGroup>(store, rank, world_size);
    group->setBackend(c10::DeviceType::CPU,
                      c10d::ProcessGroup::BackendType::GLOO, backend);
    if (nccl) {
      auto cuda = clipflow_shim::make_nccl_backend(
          c10::make_intrusive<c10d::PrefixStore>("cuda/", store), rank,
          world_size, timeout);
      group->setBackend(c10::DeviceType::CUDA,
                        c10d::ProcessGroup::BackendType::NCCL, cuda);
      group->setDefaultBackend(c10d::ProcessGroup::BackendType::NCCL);
    } else {
      group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    }
    *out = new ProcessGroupHandle{store, group, timeout};
  });
}

void clipflow_process_group_free(clipflow_process_group *group) {
  delete group;
}

// Sums `tensor` over the ranks, in place.
char *clipflow_all_reduce_sum(clipflow_process_group *group,
                              at::Tensor *tensor) {
  return catch_errors([&] {
    std::vector<at::Tensor> tensors{*tensor};
    wait(group->group->allreduce(tensors), group->timeout);
  });
}

// The sum over ranks of `input`, as a new tensor at *output that autograd
// differentiates: its backward sums the gradient over the ranks, so every
// rank must run that backward too.
char *clipflow_all_reduce_sum_with_grad(clipflow_process_group *group,
                                        const at::Tensor *input,
                                        at::Tensor **output) {
  return catch_errors([&] {
    *output = new at::Tensor(AllReduceSumWithGrad::apply(*input, group));
  });
}

// Fills `outputs[k]` (preallocated, `count` = world size) with rank k's
// `input`.
char *clipflow_all_gather(clipflow_process_group *group, at::Tensor *input,
                          at::Tensor *const *outputs, size_t count) {
  return catch_errors([&] {
    std::vector<std::vector<at::Tensor>> gathered{
        tensor_vector(outputs, count)};
    std::vector<at::Tensor> inputs{*input};
    wait(group->group->allgather(gathered, inputs), group->timeout);
  });
}

// Rank `root`'s values of `tensors` on every rank, in place, packed into
// buffers of up to `buffer_bytes` (DDP's broadcast of module states).
char *clipflow_broadcast_coalesced(clipflow_process_group *group,
                                   at::Tensor *const *tensors, size_t count,
                                   size_t buffer_bytes, int root) {
  return catch_errors([&] {
    at::NoGradGuard no_grad;
    c10d::broadcast_coalesced(group->group, tensor_vector(tensors, count),
                              buffer_bytes, root);
  });
}

char *clipflow_barrier(clipflow_process_group *group) {
  return catch_errors([&] {
    wait(group->group->barrier(), group->timeout);
  });
}

// A barrier on the CPU backend that waits as long as it takes: the
// backend's timeout is lifted for it and put back after. A rank that died
// still fails it at once (its connections close).
char *clipflow_barrier_unbounded(clipflow_process_group *group) {
  return catch_errors([&] {
    const auto forever = std::chrono::hours(24 * 365);
    auto cpu = group->group->getBackend(c10::DeviceType::CPU);
    cpu->setTimeout(forever);
    try {
      cpu->barrier()->wait(forever);
    } catch (...) {
      cpu->setTimeout(group->timeout);
      throw;
    }
    cpu->setTimeout(group->timeout);
  });
}

// DDP's Reducer over `count` parameters, bucketed as
// DistributedDataParallel buckets them (one bucket before the first
// backward, then buckets of `bucket_bytes` rebuilt in the order gradients
// became ready, the first of `first_bucket_bytes`), no unused parameters.
char *clipflow_reducer_new(clipflow_process_group *group,
                           at::Tensor *const *params, size_t count,
                           int64_t bucket_bytes, int64_t first_bucket_bytes,
                           bool static_graph, clipflow_reducer **out) {
  return catch_errors([&] {
    auto parameters = tensor_vector(params, count);
    const std::vector<bool> expect_sparse(count, false);
    auto [bucket_indices, per_bucket_limits] =
        c10d::compute_bucket_assignment_by_size(
            parameters, {static_cast<size_t>(SIZE_MAX)}, expect_sparse);
    (void)per_bucket_limits;
    std::reverse(bucket_indices.begin(), bucket_indices.end());
    auto reducer = new c10d::Reducer(
        parameters, std::move(bucket_indices), group->group, expect_sparse,
        bucket_bytes, /*find_unused_parameters=*/false,
        /*gradient_as_bucket_view=*/false, /*param_names=*/{},
        first_bucket_bytes, /*skip_all_reduce_unused_params=*/false,
        /*use_python_reducer=*/false, /*bucket_bytes_cap_list=*/{});
    if (static_graph) {
      reducer->set_static_graph();
    }
    *out = reducer;
  });
}

void clipflow_reducer_free(clipflow_reducer *reducer) {
  try {
    delete reducer;
  } catch (...) {
    // The destructor may throw when a collective failed; nothing to do.
  }
}

// What DistributedDataParallel's forward does with grad enabled, before the
// module runs: start the iteration, and rebuild the buckets after the first.
char *clipflow_reducer_prepare_for_forward(clipflow_reducer *reducer) {
  return catch_errors([&] {
    reducer->prepare_for_forward();
    reducer->rebuild_buckets();
  });
}

// What its forward does after the module ran: the next backward reduces.
char *clipflow_reducer_prepare_for_backward(clipflow_reducer *reducer) {
  return catch_errors([&] { reducer->prepare_for_backward({}); });
}

} // extern "C"
