import KaitianPOSIX

/// A call waiting for the engine thread: its handle and what to run.
struct QueuedCall {
  let work: Work
  let run: () throws(KaitianError) -> Void
}

/// The communicator's own thread, which runs calls one at a time in the order they were
/// submitted, so every rank walks the same sequence of collectives.
///
/// Why one thread: issue order is the contract that keeps ranks in step (as NCCL's stream
/// order); callers return at once and overlap their own work (PyTorch's backward pass) with
/// communication. Threading: `submit` and `stop` from any thread; calls run on the engine
/// thread only.
final class Engine: @unchecked Sendable {
  private struct Queue {
    /// Taken calls are cleared at once, so a call's closure (and what it holds: a hybrid
    /// call's steps, the application's buffers) is released as soon as it has run.
    var calls: [QueuedCall?] = []
    var head = 0
    var stopping = false
  }

  private let queue = ConditionLock(Queue())
  private var thread: OSThread?
  private let health: CommunicatorHealth
  private let rank: Int
  private let onFailure: @Sendable (KaitianError) -> Void

  /// `onFailure` runs on the engine thread with a call's error before the call completes, so
  /// peers hear about it (the communicator aborts) as early as possible.
  init(
    rank: Int, health: CommunicatorHealth, threadName: String = "kaitian engine",
    onFailure: @escaping @Sendable (KaitianError) -> Void
  ) throws(KaitianError) {
    self.rank = rank
    self.health = health
    self.onFailure = onFailure
    do {
      thread = try OSThread.spawn(name: threadName) { [self] in loop() }
    } catch {
      throw .system("cannot start the engine thread: \(error)")
    }
  }

  /// Queues a call; it runs after every call submitted before it.
  func submit(_ call: QueuedCall) {
    let accepted = queue.withLock { queue in
      guard !queue.stopping else { return false }
      queue.calls.append(call)
      return true
    }
    if accepted {
      queue.broadcast()
    } else {
      call.work.complete(
        KaitianError(
          .invalidUsage, rank: rank, call: call.work.name, "the communicator was destroyed"))
    }
  }

  /// Runs what is queued, then ends the thread.
  func stop() {
    queue.withLock { $0.stopping = true }
    queue.broadcast()
    thread?.join()
    thread = nil
  }

  private func loop() {
    while let call = next() {
      if let failure = health.failure {
        call.work.complete(
          KaitianError(
            failure.code, rank: rank, call: call.work.name,
            "not run: the communicator already failed: \(failure)"))
        continue
      }
      do {
        try call.run()
        call.work.complete(nil)
      } catch {
        onFailure(error)
        call.work.complete(error)
      }
    }
  }

  private func next() -> QueuedCall? {
    queue.wait(until: .never) { queue -> QueuedCall?? in
      guard queue.head < queue.calls.count else { return queue.stopping ? .some(nil) : nil }
      let call = queue.calls[queue.head]
      queue.calls[queue.head] = nil
      queue.head += 1
      if queue.head > 1024 && queue.head * 2 > queue.calls.count {
        queue.calls.removeFirst(queue.head)
        queue.head = 0
      }
      return call
    } ?? nil
  }
}
