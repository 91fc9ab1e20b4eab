import CKaitianShim
import Glibc

/// A mutex with one condition variable, for threads that must sleep until state changes.
///
/// Why not `Synchronization.Mutex`: it has no condition variable, and the engine's queue and
/// `Work.wait(timeout:)` need to sleep with a deadline.
final class ConditionLock: @unchecked Sendable {
  private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

  init() {
    pthread_mutex_init(mutex, nil)
    var attributes = pthread_condattr_t()
    pthread_condattr_init(&attributes)
    pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
    pthread_cond_init(condition, &attributes)
    pthread_condattr_destroy(&attributes)
  }

  deinit {
    pthread_cond_destroy(condition)
    pthread_mutex_destroy(mutex)
    mutex.deallocate()
    condition.deallocate()
  }

  func withLock<Result>(_ body: () throws -> Result) rethrows -> Result {
    pthread_mutex_lock(mutex)
    defer { pthread_mutex_unlock(mutex) }
    return try body()
  }

  /// Wakes every waiter; call with the lock held after changing the state they wait on.
  func broadcast() { pthread_cond_broadcast(condition) }

  /// Sleeps with the lock held until `ready()` is true or the monotonic deadline (nanoseconds,
  /// nil for none) passes. Returns `ready()`. Call with the lock held.
  func wait(until ready: () -> Bool, deadlineNanoseconds: Int64?) -> Bool {
    while !ready() {
      if let deadlineNanoseconds {
        guard deadlineNanoseconds > kt_monotonic_ns() else { return false }
        var time = timespec(
          tv_sec: Int(deadlineNanoseconds / 1_000_000_000),
          tv_nsec: Int(deadlineNanoseconds % 1_000_000_000))
        pthread_cond_timedwait(condition, mutex, &time)
      } else {
        pthread_cond_wait(condition, mutex)
      }
    }
    return true
  }
}

/// Starts a detached-style thread that can be joined; the engine and watchdog use it.
final class NativeThread: @unchecked Sendable {
  private var handle = pthread_t()

  init(name: String, _ body: @escaping @Sendable () -> Void) {
    final class Box {
      let body: @Sendable () -> Void
      init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    let result = pthread_create(&handle, nil, { argument in
      let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
      box.body()
      return nil
    }, box)
    precondition(result == 0, "pthread_create failed: \(result)")
  }

  func join() { pthread_join(handle, nil) }
}
