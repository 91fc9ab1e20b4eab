// Cross-process synchronisation primitives on shared memory.
//
// Why C: Swift's Glibc module has no syscall(), no futex constants, and Swift
// atomics cannot be placed at an arbitrary address inside a mapped segment.
#ifndef KT_SYNC_H
#define KT_SYNC_H

#include <stdint.h>
#include <stdatomic.h>

#ifdef __cplusplus
extern "C" {
#endif

static inline uint64_t kt_atomic_load_u64(const void *p) {
  return atomic_load_explicit((const _Atomic uint64_t *)p, memory_order_acquire);
}
static inline void kt_atomic_store_u64(void *p, uint64_t v) {
  atomic_store_explicit((_Atomic uint64_t *)p, v, memory_order_release);
}
static inline uint32_t kt_atomic_load_u32(const void *p) {
  return atomic_load_explicit((const _Atomic uint32_t *)p, memory_order_acquire);
}
static inline void kt_atomic_store_u32(void *p, uint32_t v) {
  atomic_store_explicit((_Atomic uint32_t *)p, v, memory_order_seq_cst);
}
static inline uint32_t kt_atomic_fetch_add_u32(void *p, uint32_t v) {
  return atomic_fetch_add_explicit((_Atomic uint32_t *)p, v, memory_order_seq_cst);
}
static inline void kt_fence(void) { atomic_thread_fence(memory_order_seq_cst); }
static inline void kt_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

/// Sleeps while *addr == expected, at most timeout_ns (negative: no limit).
/// Returns 0 when woken or the value differed, ETIMEDOUT, or another errno.
int kt_futex_wait(void *addr, uint32_t expected, int64_t timeout_ns);
/// Wakes up to count sleepers on addr. Returns the number woken or -errno.
int kt_futex_wake(void *addr, int count);
/// Monotonic clock in nanoseconds.
int64_t kt_monotonic_ns(void);
/// Pins the calling thread to one CPU (threads it starts later inherit it). Returns 0 or an errno.
int kt_pin_to_cpu(int cpu);
/// The CPUs the calling thread may run on, in increasing order: writes up to capacity of them to
/// cpus and returns how many there are, or -errno.
int kt_allowed_cpus(int *cpus, int capacity);

#ifdef __cplusplus
}
#endif
#endif
