// Activation checkpointing for core/src/checkpoint.rs, the role
// torch.utils.checkpoint plays for OpenCLIP's --grad-checkpointing: a custom
// autograd Function whose forward runs a Rust callback without recording a
// graph and keeps only the callback's inputs, and whose backward runs the
// callback again with gradients on and differentiates that recomputed graph.
//
// The Function's differentiable inputs are the callback's inputs followed by
// the parameters the callback reads. Listing the parameters makes the output
// require grad whenever a parameter does (even if no input does, as after a
// partially locked tower), and lets backward hand their gradients to the
// engine, which accumulates them into `.grad` as an ordinary backward would.
//
// The recomputation sees what the first run saw: the autocast state of each
// device type and the RNG states of the CPU and of the inputs' CUDA devices
// (saved before the first run, forked in for the second, as
// torch.utils.checkpoint's preserve_rng_state does). (Autocast caches weight
// casts only while gradients are on, so the no-grad first run leaves no
// gradient-less cast behind for the recomputation to pick up.)
//
// The callback crosses as a function pointer and an opaque closure pointer
// that the shim owns from the call on: CheckpointClosure frees it (through the
// drop function Rust passes) once the autograd node that needs it is gone.

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "errors.h"
#include "tensors.h"

extern "C" {
// Runs the closure on `count` inputs. On success it assigns the result to
// *output and returns true; on failure it stores a message in *error (through
// clipflow_checkpoint_set_error) and returns false. It never unwinds.
typedef bool (*clipflow_checkpoint_call)(void *closure,
                                         const at::Tensor *const *inputs,
                                         size_t count, at::Tensor *output,
                                         std::string *error);
typedef void (*clipflow_checkpoint_drop)(void *closure);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The device types whose autocast state the recomputation reproduces (those
// core/src/shim.rs can name).
constexpr c10::DeviceType kAutocastDeviceTypes[] = {
    c10::DeviceType::CPU, c10::DeviceType::CUDA, c10::DeviceType::MPS};

struct AutocastState {
  c10::DeviceType device_type;
  bool enabled;
  at::ScalarType dtype;
};

std::vector<AutocastState> current_autocast() {
  std::vector<AutocastState> states;
  for (const auto type : kAutocastDeviceTypes) {
    states.push_back({type, at::autocast::is_autocast_enabled(type),
                      at::autocast::get_autocast_dtype(type)});
  }
  return states;
}

void set_autocast(const std::vector<AutocastState> &states) {
  for (const auto &state : states) {
    at::autocast::set_autocast_enabled(state.device_type, state.enabled);
    at::autocast::set_autocast_dtype(state.device_type, state.dtype);
  }
}

// The autocast state of `states` until destroyed, as its own nesting level
// (like `with torch.autocast(...)`), then the thread's previous state.
class AutocastScope {
public:
  explicit AutocastScope(const std::vector<AutocastState> &states)
      : previous_(current_autocast()) {
    set_autocast(states);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    set_autocast(previous_);
  }
  AutocastScope(const AutocastScope &) = delete;
  AutocastScope &operator=(const AutocastScope &) = delete;

private:
  std::vector<AutocastState> previous_;
};

// States of the default generators a callback may draw from.
struct RngStates {
  at::Tensor cpu;
  std::vector<std::pair<c10::Device, at::Tensor>> cuda;
};

// Generator handles share one generator; its mutex guards the state.
at::Tensor generator_state(at::Generator generator) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

void set_generator_state(at::Generator generator, const at::Tensor &state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

RngStates capture_rng(const std::vector<c10::Device> &cuda_devices) {
  RngStates states;
  states.cpu = generator_state(at::detail::getDefaultCPUGenerator());
  for (const auto &device : cuda_devices) {
    states.cuda.emplace_back(
        device,
        generator_state(at::globalContext().defaultGenerator(device)));
  }
  return states;
}

void restore_rng(const RngStates &states) {
  set_generator_state(at::detail::getDefaultCPUGenerator(), states.cpu);
  for (const auto &[device, state] : states.cuda) {
    set_generator_state(at::globalContext().defaultGenerator(device), state);
  }
}

// The generators in `saved` state until destroyed, then back where they were.
class RngFork {
public:
  explicit RngFork(const RngStates &saved) {
    std::vector<c10::Device> devices;
    for (const auto &entry : saved.cuda) {
      devices.push_back(entry.first);
    }
    current_ = capture_rng(devices);
    restore_rng(saved);
  }
  ~RngFork() { restore_rng(current_); }
  RngFork(const RngFork &) = delete;
  RngFork &operator=(const RngFork &) = delete;

private:
  RngStates current_;
};

std::vector<c10::Device> cuda_devices_of(at::TensorList tensors) {
  std::vector<c10::Device> devices;
  for (const auto &tensor : tensors) {
    const auto device = tensor.device();
    if (device.is_cuda() &&
        std::find(devices.begin(), devices.end(), device) == devices.end()) {
      devices.push_back(device);
    }
  }
  return devices;
}

// The Rust closure, owned by the autograd node through a capsule, with what
// the recomputation must reproduce.
struct CheckpointClosure : torch::CustomClassHolder {
  CheckpointClosure(clipflow_checkpoint_call call,
                    clipflow_checkpoint_drop drop, void *closure,
                    size_t input_count)
      : call(call), drop(drop), closure(closure), input_count(input_count) {}
  ~CheckpointClosure() override { drop(closure); }
  CheckpointClosure(const CheckpointClosure &) = delete;
  CheckpointClosure &operator=(const CheckpointClosure &) = delete;

  at::Tensor run(at::TensorList inputs) const {
    std::vector<const at::Tensor *> handles;
    for (const auto &input : inputs) {
      handles.push_back(&input);
    }
    at::Tensor output;
    std::string error;
    if (!call(closure, handles.data(), handles.size(), &output, &error)) {
      TORCH_CHECK(false, "checkpointed function failed: ", error);
    }
    TORCH_CHECK(output.defined(),
                "checkpointed function returned an undefined tensor");
    return output;
  }

  clipflow_checkpoint_call call;
  clipflow_checkpoint_drop drop;
  void *closure;
  size_t input_count;
  std::vector<AutocastState> autocast;
  RngStates rng;
};

struct CheckpointFunction
    : public torch::autograd::Function<CheckpointFunction> {
  static at::Tensor forward(AutogradContext *ctx, at::TensorList inputs,
                            at::TensorList params,
                            const c10::intrusive_ptr<CheckpointClosure> &fn) {
    fn->autocast = current_autocast();
    fn->rng = capture_rng(cuda_devices_of(inputs));
    std::vector<at::Tensor> saved = inputs.vec();
    saved.insert(saved.end(), params.begin(), params.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["closure"] = c10::IValue::make_capsule(fn);
    // Function::apply already turned gradients off.
    return fn->run(inputs);
  }

  static variable_list backward(AutogradContext *ctx,
                                variable_list grad_outputs) {
    const auto fn = c10::static_intrusive_pointer_cast<CheckpointClosure>(
        ctx->saved_data["closure"].toCapsule());
    const auto saved = ctx->get_saved_variables();
    // Fresh leaves for the inputs, so the recomputed graph stops at them;
    // parameters are used as they are (the callback reads them itself).
    std::vector<at::Tensor> inputs;
    variable_list targets;
    std::vector<size_t> target_slots;
    for (size_t i = 0; i < saved.size(); ++i) {
      at::Tensor tensor = saved[i];
      if (i < fn->input_count) {
        tensor = tensor.detach().requires_grad_(ctx->needs_input_grad(i));
        inputs.push_back(tensor);
      }
      if (ctx->needs_input_grad(i)) {
        targets.push_back(tensor);
        target_slots.push_back(i);
      }
    }
    // A double backward (create_graph) runs this with gradients on.
    const bool create_graph = at::GradMode::is_enabled();
    at::Tensor output;
    {
      RngFork rng(fn->rng);
      AutocastScope autocast(fn->autocast);
      at::AutoGradMode grad_on(true);
      output = fn->run(inputs);
    }
    // One gradient per forward argument; the closure (last) gets none.
    variable_list grads(saved.size() + 1);
    if (targets.empty() || !output.requires_grad()) {
      return grads;
    }
    const auto target_grads =
        torch::autograd::grad({output}, targets, {grad_outputs[0]},
                              /*retain_graph=*/std::nullopt, create_graph,
                              /*allow_unused=*/true);
    for (size_t k = 0; k < target_slots.size(); ++k) {
      grads[target_slots[k]] = target_grads[k];
    }
    return grads;
  }
};

bool any_requires_grad(at::TensorList tensors) {
  return std::any_of(tensors.begin(), tensors.end(),
                     [](const at::Tensor &t) { return t.requires_grad(); });
}

} // namespace

extern "C" {

void clipflow_checkpoint_set_error(std::string *error, const char *message,
                                   size_t length) {
  error->assign(message, length);
}

void clipflow_checkpoint_set_output(at::Tensor *output,
                                    const at::Tensor *tensor) {
  *output = *tensor;
}

// Runs `call(closure, inputs)` checkpointed and stores the result in a new
// tensor handle at *output. The shim owns `closure` from here on, whatever
// happens. When gradients are off or nothing requires grad there is nothing to
// recompute, and the callback simply runs once.
char *clipflow_checkpoint(clipflow_checkpoint_call call,
                          clipflow_checkpoint_drop drop, void *closure,
                          const at::Tensor *const *inputs, size_t input_count,
                          const at::Tensor *const *params, size_t param_count,
                          at::Tensor **output) {
  c10::intrusive_ptr<CheckpointClosure> fn;
  if (char *error = clipflow_shim::catch_errors([&] {
        fn = c10::make_intrusive<CheckpointClosure>(call, drop, closure,
                                                    input_count);
      })) {
    drop(closure);
    return error;
  }
  return clipflow_shim::catch_errors([&] {
    const auto input_list = clipflow_shim::tensor_vector(inputs, input_count);
    const auto param_list = clipflow_shim::tensor_vector(params, param_count);
    at::Tensor result;
    if (at::GradMode::is_enabled() &&
        (any_requires_grad(input_list) || any_requires_grad(param_list))) {
      result = CheckpointFunction::apply(at::TensorList(input_list),
                                         at::TensorList(param_list), fn);
    } else {
      result = fn->run(input_list);
    }
    *output = new at::Tensor(std::move(result));
  });
}

} // extern "C"
