import Glibc
import Synchronization

/// The three threads a hybrid communicator runs its calls on, one per stage of a hierarchical
/// allreduce: reduce inside the group, relay between groups, gather inside the group.
///
/// Why stages on their own threads: each stage uses its own communicators (the group's library,
/// the shard column, a second instance of the group's library), so while chunk k crosses between
/// groups, chunk k+1 is already being reduced and chunk k-1 gathered, and a call's chunks flow
/// while the caller (DDP's backward pass) computes the next one. Each stage takes tasks in
/// issue order and each communicator is used by one stage only, so every rank issues every
/// communicator's calls in the same order.
///
/// A failed step fails the whole communicator (`failAll`), because a half-done hierarchical
/// call leaves the ranks out of step: every pending call completes at once with the failure
/// (a stage thread may still be blocked inside a library that cannot be aborted, until that
/// library's own timeout), and nothing queued or later runs.
final class HybridPipeline: Sendable {
  typealias Step = () throws(KaitianError) -> Void

  /// One step per stage; nil where the task has nothing to do at that stage.
  struct Steps {
    var reduce: Step?
    var relay: Step?
    var gather: Step?

    var all: [Step?] { [reduce, relay, gather] }
  }

  /// A call's first error, shared by its tasks: later tasks of a failed call are skipped.
  private final class Outcome: Sendable {
    let error = Mutex<KaitianError?>(nil)
  }

  /// Calls submitted and not yet completed, and tasks inside the stages.
  private struct InFlight {
    var calls: [ObjectIdentifier: Work] = [:]
    var tasks = 0
  }

  private let stages: [Engine]
  private let rank: Int
  private let health: CommunicatorHealth
  private let inFlight = Mutex(InFlight())
  /// Held while a call is counted in or a direct call issues, so that a call counted in on
  /// another thread waits for the direct call's issue. Reentrant: issuing may complete an engine
  /// call at once, whose completion may issue the next call on this thread.
  private let issuing = RecursiveLock()
  private let explain: @Sendable (KaitianError) -> KaitianError
  private let onFailure: @Sendable (KaitianError) -> Void

  /// `explain` turns a failed step's error into the communicator's failure (a lost peer's
  /// error names the rank, where a library's own says only that a connection broke).
  /// `onFailure` runs once, with the communicator's first failure, after `health` records it
  /// and every pending call has completed with it (it aborts the communicator's layers).
  init(
    rank: Int, health: CommunicatorHealth,
    explain: @escaping @Sendable (KaitianError) -> KaitianError = { $0 },
    onFailure: @escaping @Sendable (KaitianError) -> Void
  ) throws(KaitianError) {
    var stages: [Engine] = []
    do throws(KaitianError) {
      for stage in 0..<3 {
        // Each stage engine has its own health that never fails: the steps below check the
        // communicator's and complete the call with its failure themselves.
        stages.append(
          try Engine(
            rank: rank, health: CommunicatorHealth(), threadName: "kt-hybrid\(stage)",
            onFailure: { _ in }))
      }
    } catch {
      for engine in stages { engine.stop() }
      throw error
    }
    self.stages = stages
    self.rank = rank
    self.health = health
    self.explain = explain
    self.onFailure = onFailure
  }

  /// Queues a call's tasks, in order; `work` completes after the last task's gather step, with
  /// the call's first error. A call without tasks still completes in order.
  func submit(work: Work, tasks: [Steps]) {
    let tasks = tasks.isEmpty ? [Steps()] : tasks
    guard register(work, tasks: tasks.count) else { return }
    let outcome = Outcome()
    for (index, task) in tasks.enumerated() {
      forward(
        task.all, stage: 0, outcome: outcome, call: work, completes: index == tasks.count - 1)
    }
  }

  /// A call that is one quick step (issuing an engine call that completes on its own):
  /// run on this thread when no task is in the stages, else queued at the gather stage.
  ///
  /// Why: a task crosses three stage threads, and on a busy host each hand-off waits for a
  /// core (the Python pipeline measured DDP's broadcast of BatchNorm buffers before every
  /// forward at 15 ms queued against 2 ms direct). Issuing while no task is in the stages keeps
  /// the order, as every communicator's earlier calls have been issued. `work` completes once
  /// the step returns.
  func submitDirect(work: Work, step: @escaping Step) {
    let ran = issuing.withLock { () -> KaitianError?? in
      guard inFlight.withLock({ $0.tasks == 0 }), health.failure == nil else { return .none }
      do throws(KaitianError) {
        try step()
        return .some(nil)
      } catch {
        return .some(explain(error.attributed(rank: rank, call: work.name)))
      }
    }
    switch ran {
    case .none: submit(work: work, tasks: [Steps(gather: step)])
    case .some(.none): work.complete(nil)
    case .some(.some(let error)):
      work.complete(error)
      failAll(error)
    }
  }

  /// Fails the communicator with `error` unless it failed already: pending calls complete with
  /// it now, queued steps will not run.
  func failAll(_ error: KaitianError) {
    guard health.fail(error) else { return }
    let pending = inFlight.withLock { state in
      defer { state.calls = [:] }
      return Array(state.calls.values)
    }
    for work in pending {
      work.complete(
        KaitianError(error.code, rank: rank, call: work.name, failedBecause(error, work)))
    }
    onFailure(error)
  }

  /// Runs what is queued, then ends the threads.
  func stop() {
    for engine in stages { engine.stop() }
  }

  /// Counts a call in; false (and the call completed) when the communicator failed already.
  private func register(_ work: Work, tasks: Int) -> Bool {
    let failure = issuing.withLock {
      inFlight.withLock { state -> KaitianError? in
        if let failure = health.failure { return failure }
        state.calls[ObjectIdentifier(work)] = work
        state.tasks += tasks
        return nil
      }
    }
    guard let failure else { return true }
    work.complete(
      KaitianError(
        failure.code, rank: rank, call: work.name,
        "not run: the communicator already failed: \(failure)"))
    return false
  }

  private func failedBecause(_ error: KaitianError, _ work: Work) -> String {
    error.call == work.name ? error.cause : "not run: the communicator failed: \(error)"
  }

  private func forward(
    _ steps: [Step?], stage: Int, outcome: Outcome, call: Work, completes: Bool
  ) {
    let last = stage == stages.count - 1
    // Only the call's last task completes its work, at the last stage; other stage calls carry
    // a work of their own that nobody waits for.
    let stageWork = last && completes ? call : Work(name: call.name)
    stages[stage].submit(
      QueuedCall(work: stageWork) { [self] () throws(KaitianError) in
        run(steps[stage], outcome: outcome, call: call)
        guard last else {
          forward(steps, stage: stage + 1, outcome: outcome, call: call, completes: completes)
          return
        }
        inFlight.withLock { state in
          state.tasks -= 1
          if completes { state.calls[ObjectIdentifier(call)] = nil }
        }
        if completes, let error = outcome.error.withLock({ $0 }) { throw error }
      })
  }

  /// Runs one step unless the call or the communicator failed already; a failing step records
  /// its error for the call and fails the communicator.
  private func run(_ step: Step?, outcome: Outcome, call: Work) {
    guard outcome.error.withLock({ $0 }) == nil else { return }
    if let failure = health.failure {
      outcome.error.withLock {
        $0 = KaitianError(
          failure.code, rank: rank, call: call.name, failedBecause(failure, call))
      }
      return
    }
    guard let step else { return }
    do throws(KaitianError) {
      try step()
    } catch {
      let explained = explain(error.attributed(rank: rank, call: call.name))
      outcome.error.withLock { $0 = explained }
      failAll(explained)
    }
  }
}

/// A pthread mutex that the thread holding it may take again.
private final class RecursiveLock: @unchecked Sendable {
  private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

  init() {
    var attributes = pthread_mutexattr_t()
    pthread_mutexattr_init(&attributes)
    pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_RECURSIVE))
    pthread_mutex_init(mutex, &attributes)
    pthread_mutexattr_destroy(&attributes)
  }

  deinit {
    pthread_mutex_destroy(mutex)
    mutex.deallocate()
  }

  func withLock<Result, Failure: Error>(
    _ body: () throws(Failure) -> Result
  ) throws(Failure) -> Result {
    pthread_mutex_lock(mutex)
    defer { pthread_mutex_unlock(mutex) }
    return try body()
  }
}
