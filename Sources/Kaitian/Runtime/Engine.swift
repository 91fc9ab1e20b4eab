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
  private let lock = ConditionLock()
  private var queue: [QueuedCall] = []
  private var head = 0
  private var stopping = false
  private var thread: NativeThread?
  private let health: CommunicatorHealth
  private let rank: Int
  private let onFailure: @Sendable (KaitianError) -> Void

  /// `onFailure` runs on the engine thread with a call's error before the call completes, so
  /// peers hear about it (the communicator aborts) as early as possible.
  init(
    rank: Int, health: CommunicatorHealth,
    onFailure: @escaping @Sendable (KaitianError) -> Void
  ) {
    self.rank = rank
    self.health = health
    self.onFailure = onFailure
    thread = NativeThread(name: "kaitian-engine") { [self] in loop() }
  }

  /// Queues a call; it runs after every call submitted before it.
  func submit(_ call: QueuedCall) {
    let accepted = lock.withLock {
      guard !stopping else { return false }
      queue.append(call)
      lock.broadcast()
      return true
    }
    if !accepted {
      call.work.complete(
        KaitianError(.invalidUsage, call: call.work.name, "the communicator was destroyed"))
    }
  }

  /// Runs what is queued, then ends the thread. Calls queued after a failure fail at once.
  func stop() {
    lock.withLock {
      stopping = true
      lock.broadcast()
    }
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
    lock.withLock {
      _ = lock.wait(until: { head < queue.count || stopping }, deadlineNanoseconds: nil)
      guard head < queue.count else { return nil }
      let call = queue[head]
      head += 1
      if head > 1024 && head * 2 > queue.count {
        queue.removeFirst(head)
        head = 0
      }
      return call
    }
  }
}
