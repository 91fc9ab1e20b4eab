import KaitianStore
import Synchronization

/// The three threads a hybrid communicator runs its calls on, one per stage of a hierarchical
/// allreduce: reduce inside the group, relay between groups, gather inside the group.
///
/// Why stages on their own threads: each stage uses its own communicators (the group's library,
/// the shard column, a second instance of the group's library), so while chunk k crosses between
/// groups, chunk k+1 is already being reduced and chunk k-1 gathered, and a call's chunks flow
/// while the caller (DDP's backward pass) computes the next one. Each stage takes tasks in
/// issue order and each communicator is used by one stage only, so every rank issues every
/// communicator's calls in the same order. python/kaitian's `_Pipeline` is the same design.
///
/// A failed step fails the whole communicator (`fail`), because a half-done hierarchical call
/// leaves the ranks out of step: the rest of that call's steps and every later call are not
/// run, and complete with the first failure.
final class HybridPipeline: Sendable {
  /// One step per stage; nil where the task has nothing to do at that stage.
  struct Steps {
    var reduce: (() throws(KaitianError) -> Void)?
    var relay: (() throws(KaitianError) -> Void)?
    var gather: (() throws(KaitianError) -> Void)?

    var all: [(() throws(KaitianError) -> Void)?] { [reduce, relay, gather] }
  }

  /// A call's first error, shared by its tasks: later tasks of a failed call are skipped.
  private final class Outcome: Sendable {
    let error = Mutex<KaitianError?>(nil)
  }

  private let stages: [Engine]
  private let rank: Int
  private let health: CommunicatorHealth
  private let fail: @Sendable (KaitianError) -> Void

  /// `fail` records the communicator's first failure in `health` and aborts its layers; it
  /// runs on the stage thread whose step failed.
  init(
    rank: Int, health: CommunicatorHealth,
    fail: @escaping @Sendable (KaitianError) -> Void
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
    self.fail = fail
  }

  /// Queues a call's tasks, in order; `work` completes after the last task's gather step, with
  /// the call's first error. A call without tasks still completes in order.
  func submit(work: Work, tasks: [Steps]) {
    let outcome = Outcome()
    let tasks = tasks.isEmpty ? [Steps()] : tasks
    for (index, task) in tasks.enumerated() {
      forward(task.all, stage: 0, outcome: outcome, call: work, completes: index == tasks.count - 1)
    }
  }

  /// Runs what is queued, then ends the threads.
  func stop() {
    for engine in stages { engine.stop() }
  }

  private func forward(
    _ steps: [(() throws(KaitianError) -> Void)?], stage: Int, outcome: Outcome, call: Work,
    completes: Bool
  ) {
    let last = stage == stages.count - 1
    // Only the call's last task completes its work, at the last stage; other stage calls carry
    // a work of their own that nobody waits for.
    let stageWork = last && completes ? call : Work(name: call.name)
    stages[stage].submit(
      QueuedCall(work: stageWork) { [self] () throws(KaitianError) in
        defer {
          if !last {
            forward(steps, stage: stage + 1, outcome: outcome, call: call, completes: completes)
          }
        }
        run(steps[stage], outcome: outcome, callName: call.name)
        if last && completes, let error = outcome.error.withLock({ $0 }) { throw error }
      })
  }

  /// Runs one step unless the call or the communicator failed already; a failing step records
  /// its error for the call and fails the communicator.
  private func run(
    _ step: (() throws(KaitianError) -> Void)?, outcome: Outcome, callName: String
  ) {
    guard outcome.error.withLock({ $0 }) == nil else { return }
    if let failure = health.failure {
      outcome.error.withLock {
        $0 = KaitianError(
          failure.code, rank: rank, call: callName,
          "not run: the communicator already failed: \(failure)")
      }
      return
    }
    guard let step else { return }
    do throws(KaitianError) {
      try step()
    } catch {
      let attributed = error.attributed(rank: rank, call: callName)
      outcome.error.withLock { $0 = attributed }
      fail(attributed)
    }
  }
}
