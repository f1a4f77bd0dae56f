// A fixed pool of worker threads for data-parallel loops (CPU kernels).
//
//   ThreadPool pool(4);                       // 4 threads in all, caller included
//   pool.ParallelFor(n, [&](int64_t i, int thread) { ... });
//
// Tasks are handed out one at a time from an atomic counter (dynamic
// scheduling), so uneven tasks (block-sparse rows) balance themselves. `thread`
// is in [0, num_threads()) and is stable within a task: use it to index
// per-thread scratch space. One ParallelFor runs at a time per pool; a second
// caller waits. Torch-free.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace rainserve {

class ThreadPool {
 public:
  // num_threads <= 0 means one per hardware thread.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i, thread) for every i in [0, n) and returns when all are done.
  // The caller's thread works too (as thread 0). fn must not throw.
  void ParallelFor(int64_t n, const std::function<void(int64_t, int)>& fn);

  static int HardwareThreads();

 private:
  void WorkerLoop(int thread);
  void RunTasks(int thread);

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // serialises ParallelFor callers

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  uint64_t generation_ = 0;
  bool stop_ = false;
  int active_workers_ = 0;

  const std::function<void(int64_t, int)>* fn_ = nullptr;
  int64_t num_tasks_ = 0;
  std::atomic<int64_t> next_task_{0};
};

}  // namespace rainserve
