// How clipflow's shim reports failures to Rust: every `extern "C"` entry
// point runs its body through catch_errors, which turns any C++ exception
// into a heap-allocated message (freed by clipflow_shim_free_error); a null
// return means success.

#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace clipflow_shim {

inline char *copy_message(const char *message) {
  const size_t length = std::strlen(message);
  char *copy = static_cast<char *>(std::malloc(length + 1));
  if (copy != nullptr) {
    std::memcpy(copy, message, length + 1);
  }
  return copy;
}

// Runs `body`, turning any exception into an error message for Rust.
template <typename Body> char *catch_errors(Body body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error &error) {
    return copy_message(error.what_without_backtrace());
  } catch (const std::exception &error) {
    return copy_message(error.what());
  } catch (...) {
    return copy_message("unknown C++ exception in clipflow's libtorch shim");
  }
}

} // namespace clipflow_shim
