import Synchronization

/// The first fatal error of a communicator, readable from any thread.
///
/// Why a separate object: the engine thread, the watchdog thread and user threads all need to
/// know at once that the communicator is broken; once set, every pending and later call fails
/// with this error, the way NCCL's asynchronous error poisons a communicator.
final class CommunicatorHealth: Sendable {
  private let hasFailed = Atomic<Bool>(false)
  private let error = Mutex<KaitianError?>(nil)

  var isFailed: Bool { hasFailed.load(ordering: .acquiring) }

  var failure: KaitianError? { error.withLock { $0 } }

  /// Records `failure` if none was recorded; returns true when this call recorded it.
  @discardableResult
  func fail(_ failure: KaitianError) -> Bool {
    let recorded = error.withLock { current -> Bool in
      guard current == nil else { return false }
      current = failure
      return true
    }
    if recorded { hasFailed.store(true, ordering: .releasing) }
    return recorded
  }
}
