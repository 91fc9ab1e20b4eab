import KaitianPOSIX

/// The handle of one submitted call: wait for it, poll it, or be called back when it ends.
///
/// Threading: completed once by the engine thread; waited on and queried from any thread.
/// Callbacks run on the engine thread, so they must be short and must not wait on other calls
/// of the same communicator.
public final class Work: @unchecked Sendable {
  /// What the call was, such as "allreduce #12 (float32 x 1024, sum)", for messages.
  public let name: String
  private let state = ConditionLock(State())

  private struct State {
    var finished = false
    var error: KaitianError?
    var source: Int?
    var callbacks: [@Sendable (KaitianError?) -> Void] = []
  }

  init(name: String) { self.name = name }

  /// Whether the call has ended (successfully or not).
  public var isCompleted: Bool { state.withLock { $0.finished } }

  /// The call's error once it has ended with one.
  public var failure: KaitianError? { state.withLock { $0.error } }

  /// The rank a receive took its message from, once it has completed (a receive from any rank
  /// learns it only then); nil for other calls.
  public internal(set) var source: Int? {
    get { state.withLock { $0.source } }
    set { state.withLock { $0.source = newValue } }
  }

  /// Blocks until the call ends, or `timeout` passes (nil waits without limit).
  /// Throws the call's error, or a timeout error that leaves the call running.
  public func wait(timeout: Duration? = nil) throws(KaitianError) {
    let deadline = timeout.map { Deadline.after($0) } ?? .never
    let outcome: KaitianError?? = state.wait(until: deadline) { state in
      state.finished ? .some(state.error) : nil
    }
    switch outcome {
    case .none:
      throw KaitianError(
        .timeout, call: name,
        "wait timed out after \(timeout.map { "\($0)" } ?? "?"); the call is still running")
    case .some(.some(let failure)): throw failure
    case .some(.none): return
    }
  }

  /// Suspends until the call ends; throws its error.
  public func value() async throws(KaitianError) {
    let failure: KaitianError? = await withCheckedContinuation { continuation in
      onCompletion { continuation.resume(returning: $0) }
    }
    if let failure { throw failure }
  }

  /// Runs `callback` with the call's error (nil on success) when it ends, at once if it has.
  public func onCompletion(_ callback: @escaping @Sendable (KaitianError?) -> Void) {
    let outcome: KaitianError?? = state.withLock { state in
      if state.finished { return .some(state.error) }
      state.callbacks.append(callback)
      return .none
    }
    if case .some(let failure) = outcome { callback(failure) }
  }

  /// Only the first completion counts: a hybrid call failed early by its communicator is
  /// completed again, later, by the stage that reaches it.
  func complete(_ failure: KaitianError?) {
    let pending = state.withLock { state -> [@Sendable (KaitianError?) -> Void]? in
      guard !state.finished else { return nil }
      state.finished = true
      state.error = failure
      defer { state.callbacks = [] }
      return state.callbacks
    }
    guard let pending else { return }
    state.broadcast()
    for callback in pending { callback(failure) }
  }
}
