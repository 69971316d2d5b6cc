// The driver's one error style. Inside the driver a failure is an exception (std::runtime_error
// or a subclass such as model::GgufError, std::invalid_argument for bad user input), caught at
// the program's edges: `kvfuse`'s main prints it and exits non-zero, the server turns it into
// an HTTP error. The two other kinds of result stop where they enter driver code:
//   * the library's kvfuse::Status (the public API, as any engine sees it) through
//     throw_if_failed;
//   * the chunk store's store::Result, which stays a value inside driver/store (a missing or
//     damaged chunk is an expected outcome there, a miss), through value_or_throw.
// Both name the operation that failed, so every message says what was being done.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

#include "kvfuse/kvfuse.hpp"

namespace kvfuse::driver {

// `what` is a view: a literal passed on every kernel call must not become a std::string (a heap
// allocation past 15 characters) when the call succeeded.
inline void throw_if_failed(const kvfuse::Status& status, std::string_view what) {
    if (!status.ok()) throw std::runtime_error(std::string(what) + ": " + status.message());
}

// The value of a store::Result (moved out), or a runtime_error naming `what` and the store's
// reason.
template <class Result>
auto value_or_throw(Result&& result, const std::string& what) {
    if (!result.ok()) throw std::runtime_error(what + ": " + result.status().to_string());
    return std::forward<Result>(result).value();
}

}  // namespace kvfuse::driver
