import Glibc

/// A value guarded by a pthread mutex, with a condition variable to wait for it to change.
///
/// `Synchronization.Mutex` cannot wait on a condition, and the store's blocking `get`/`wait`
/// need exactly that: sleep until another thread sets a key, with a deadline. The condition
/// variable runs on `CLOCK_MONOTONIC`, like `Deadline`, so clock jumps do not disturb waits.
///
/// Threading: `@unchecked Sendable` because every access to `state` happens with `mutex` held.
public final class ConditionLock<State>: @unchecked Sendable {
  private var state: State
  private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
  private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

  public init(_ state: State) {
    self.state = state
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
    condition.deallocate()
    mutex.deallocate()
  }

  /// Runs `body` with the state locked.
  public func withLock<Result, Failure: Error>(
    _ body: (inout State) throws(Failure) -> Result
  ) throws(Failure) -> Result {
    pthread_mutex_lock(mutex)
    defer { pthread_mutex_unlock(mutex) }
    return try body(&state)
  }

  /// Runs `body` with the state locked, again after every `broadcast()`, until it returns a
  /// value or `deadline` passes (then `nil`). `body` may throw to end the wait early.
  public func wait<Result, Failure: Error>(
    until deadline: Deadline, _ body: (inout State) throws(Failure) -> Result?
  ) throws(Failure) -> Result? {
    pthread_mutex_lock(mutex)
    defer { pthread_mutex_unlock(mutex) }
    while true {
      if let result = try body(&state) { return result }
      if deadline.isNever {
        pthread_cond_wait(condition, mutex)
      } else {
        if deadline.hasPassed { return nil }
        var until = deadline.timespecValue
        pthread_cond_timedwait(condition, mutex, &until)
      }
    }
  }

  /// Wakes every thread in `wait` so it re-checks the state; call after changing it.
  public func broadcast() {
    pthread_cond_broadcast(condition)
  }
}
