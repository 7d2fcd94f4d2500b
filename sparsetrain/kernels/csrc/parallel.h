// Splitting work over threads without atomics in the math (shared by the compiled CPU kernels).
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace bsk {

// Runs a task on another thread: XLA's intra-op thread pool when a kernel is called through FFI
// (so a kernel never competes with XLA's own workers for the cores), empty = new std::threads.
using Schedule = std::function<void(std::function<void()>)>;

// Runs fn(index, begin, end) over [0, n), split in up to `threads` contiguous ranges whose starts
// are multiples of `align`. `index` < threads names the participant (for per-thread scratch).
//
// With a Schedule the work is cut in up to kRangesPerThread x threads ranges that the calling
// thread and up to threads - 1 pool tasks claim from a shared counter: a task that starts late
// (its worker was busy with another XLA thunk) takes what is left instead of leaving the caller
// waiting for a half of the work. The caller only waits for ranges already claimed (running), so
// a busy pool never blocks it; a task that starts after every range was claimed returns at once
// (it only touches the shared counters it co-owns).
constexpr int64_t kRangesPerThread = 4;

template <typename Fn>
void parallel_ranges(int64_t n, int64_t align, int threads, Fn fn, const Schedule& schedule = {}) {
  const int64_t units = (n + align - 1) / align;
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, units));
  auto bounds = [units, t, n, align](int64_t i) { return std::min(n, (units * i / t) * align); };
  if (t == 1) {
    fn(0, int64_t{0}, n);
    return;
  }
  if (!schedule) {
    std::vector<std::thread> pool;
    pool.reserve(t - 1);
    for (int64_t i = 1; i < t; ++i) pool.emplace_back(fn, int(i), bounds(i), bounds(i + 1));
    fn(0, bounds(0), bounds(1));
    for (auto& th : pool) th.join();
    return;
  }
  const int64_t n_ranges = std::min<int64_t>(units, t * kRangesPerThread);
  auto range = [units, n_ranges, n, align](int64_t i) {
    return std::min(n, (units * i / n_ranges) * align);
  };
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int> ids{0};
    int64_t done = 0;  // guarded by mu
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, n_ranges, range, &fn]() {
    int id = -1;
    for (int64_t r; (r = state->next.fetch_add(1)) < n_ranges;) {
      if (id < 0) id = state->ids.fetch_add(1);
      fn(id, range(r), range(r + 1));
      std::lock_guard<std::mutex> lock(state->mu);
      if (++state->done == n_ranges) state->cv.notify_all();
    }
  };
  for (int64_t i = 1; i < t; ++i) schedule(work);
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == n_ranges; });
}

}  // namespace bsk
