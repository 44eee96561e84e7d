// Threads attnscope starts itself (loader workers, the results writer, helpers), counted.
//
// Some code forks and keeps running in the child without exec (h5::read_in_child checks an
// untrusted HDF5 file there). A thread that holds a lock at the moment of the fork (malloc's,
// a sanitizer allocator's, a static initialiser's) leaves that lock held forever in the child,
// which then hangs: GCC 12's AddressSanitizer did so in CI. Threads started through
// start_thread / start_async are counted from before they exist until their function
// returns, so the forking code can refuse to fork while one runs (a programming error, found
// by the tests every time instead of as a rare hang). LibTorch's OpenMP workers are not
// counted: between parallel regions they wait and hold nothing.
#pragma once

#include <atomic>
#include <future>
#include <thread>
#include <utility>

namespace attnscope {

namespace detail {
inline std::atomic<int>& started_threads() {
  static std::atomic<int> count{0};
  return count;
}
// Decrements the count when the thread's function has returned (or thrown).
struct ThreadDone {
  ThreadDone() = default;
  ThreadDone(const ThreadDone&) = delete;
  ThreadDone& operator=(const ThreadDone&) = delete;
  ~ThreadDone() { --started_threads(); }
};
}  // namespace detail

/// How many threads started by start_thread / start_async have not finished their function.
inline int running_threads() {
  return detail::started_threads().load();
}

/// std::thread running f(), counted by running_threads().
template <class F>
std::thread start_thread(F f) {
  ++detail::started_threads();
  try {
    return std::thread([f = std::move(f)]() mutable {
      detail::ThreadDone done;
      f();
    });
  } catch (...) {
    --detail::started_threads();
    throw;
  }
}

/// std::async(std::launch::async, f), counted by running_threads().
template <class F>
auto start_async(F f) {
  ++detail::started_threads();
  try {
    return std::async(std::launch::async, [f = std::move(f)]() mutable {
      detail::ThreadDone done;
      return f();
    });
  } catch (...) {
    --detail::started_threads();
    throw;
  }
}

}  // namespace attnscope
