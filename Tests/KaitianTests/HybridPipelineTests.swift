import Glibc
import KaitianPOSIX
import KaitianVerification
import Synchronization
import Testing

@testable import Kaitian

/// The hybrid communicator's stage threads: the order of the application's steps against
/// allreduces, direct calls, and a failure reaching a rank blocked in a library that cannot be
/// aborted.
@Suite struct HybridPipelineTests {
  typealias Layout = HybridHarness.Layout

  /// KAITIAN_HYBRID_CHUNK_BYTES sets the chunk size: a whole number of bytes, at least 1.
  @Test func chunkSizeComesFromItsVariable() throws {
    let name = "KAITIAN_HYBRID_CHUNK_BYTES"
    #expect(try CommunicatorOptions.from { _ in nil }.hybridChunkBytes == 4 << 20)
    #expect(try CommunicatorOptions.from { $0 == name ? "40" : nil }.hybridChunkBytes == 40)
    for bad in ["0", "-4", "4M", "1.5", ""] {
      #expect(throws: KaitianError.self, "\(name)=\(bad)") {
        try CommunicatorOptions.from { $0 == name ? bad : nil }
      }
    }
  }

  /// Steps submitted between allreduces run on their stages in issue order: at each stage,
  /// call k's step before call k+1's, and a call's gather after its own reduce.
  @Test func stepsKeepIssueOrderWithAllreduces() {
    let errors = HybridHarness.run(.equal2x2) { hybrid in
      let log = Mutex<[String]>([])
      let buffer = ElementBuffer(.float32, count: 4099) { Double($0 % 5) }
      var works: [Work] = []
      for call in 0..<6 {
        if call % 2 == 0 {
          works.append(
            try hybrid.allReduce(
              buffer.raw, into: buffer.raw, count: 4099, dataType: .float32, op: .max))
        }
        works.append(
          hybrid.submit(
            "steps \(call)",
            reduce: { log.withLock { $0.append("reduce \(call)") } },
            relay: { log.withLock { $0.append("relay \(call)") } },
            gather: { log.withLock { $0.append("gather \(call)") } }))
      }
      for work in works { try work.wait() }
      let entries = log.withLock { $0 }
      for stage in ["reduce", "relay", "gather"] {
        let order = entries.filter { $0.hasPrefix(stage) }
        #expect(order == (0..<6).map { "\(stage) \($0)" }, "rank \(hybrid.rank): \(entries)")
      }
      for call in 0..<6 {
        let reduce = entries.firstIndex(of: "reduce \(call)") ?? .max
        let relay = entries.firstIndex(of: "relay \(call)") ?? .max
        let gather = entries.firstIndex(of: "gather \(call)") ?? -1
        #expect(reduce < relay && relay < gather, "rank \(hybrid.rank): \(entries)")
      }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  /// A direct call runs on the caller's thread when nothing is inside the stages, and is
  /// queued behind the calls that are.
  @Test func directCallsRunAtOnceWhenIdleAndInOrderWhenNot() {
    let errors = HybridHarness.run(.unequal2x1) { hybrid in
      let caller = pthread_self()
      let ranOnCaller = Mutex<Bool?>(nil)
      try hybrid.submitDirect("idle") {
        ranOnCaller.withLock { $0 = pthread_equal(pthread_self(), caller) != 0 }
      }.wait()
      #expect(ranOnCaller.withLock { $0 } == true, "rank \(hybrid.rank)")

      // A direct step whose issue completes at once may issue the next call from its
      // completion, on the same thread: that must not deadlock.
      let nested = Mutex<[Work]>([])
      try hybrid.submitDirect("issuing more") {
        let direct = hybrid.submitDirect("nested direct") {}
        let queued = hybrid.submit("nested steps", reduce: nil, relay: nil, gather: {})
        nested.withLock { $0 = [direct, queued] }
      }.wait()
      for work in nested.withLock({ $0 }) { try work.wait() }

      let release = ConditionLock(false)
      let order = Mutex<[String]>([])
      let blocked = hybrid.submit(
        "blocking", reduce: nil, relay: nil,
        gather: {
          _ = release.wait(until: .after(.seconds(10))) { $0 ? true : nil }
          order.withLock { $0.append("queued call") }
        })
      let direct = hybrid.submitDirect("behind") {
        order.withLock { $0.append("direct call") }
      }
      #expect(!direct.isCompleted, "rank \(hybrid.rank): a direct call overtook a queued one")
      release.withLock { $0 = true }
      release.broadcast()
      try blocked.wait()
      try direct.wait()
      #expect(order.withLock { $0 } == ["queued call", "direct call"], "rank \(hybrid.rank)")
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  /// Rank 0's reduce stage is stuck inside its group library, which ignores aborts (as gloo
  /// does). When rank 2 aborts, rank 0's pending call fails within moments, naming the cause,
  /// through the all-ranks communicator's health; the stuck thread is let go afterwards.
  @Test func aFailureReachesARankBlockedInALibraryThatCannotBeAborted() {
    let stuck = ConditionLock(false)
    let failures = Mutex<[Int: String]>([:])
    let makeGroup: @Sendable (GroupMembership) throws(KaitianError) -> any GroupCollectives = {
      membership in
      let engine = try HybridCommunicator.engineGroup(membership)
      let global = membership.group.ranks[membership.localRank]
      return global == 0 && membership.instance == 0
        ? StuckGroup(engine, until: stuck) : engine
    }
    let errors = HybridHarness.run(.unequal2x1, timeoutSeconds: 30, makeGroup: makeGroup) {
      hybrid in
      let buffer = ElementBuffer(.float32, count: 64)
      let work = try hybrid.allReduce(
        buffer.raw, into: buffer.raw, count: 64, dataType: .float32, op: .sum)
      if hybrid.rank == 2 {
        usleep(200_000)
        hybrid.abort(reason: "rank 2 gives up")
      }
      // Well before the stuck library lets go (20 s): a wait that times out fails the test.
      do {
        try work.wait(timeout: .seconds(10))
      } catch {
        failures.withLock { $0[hybrid.rank] = "\(error)" }
      }
      if hybrid.rank == 0 {
        stuck.withLock { $0 = true }
        stuck.broadcast()
      }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
    let seen = failures.withLock { $0 }
    #expect(seen.count == 3, "\(seen)")
    for (rank, error) in seen {
      #expect(error.contains("rank 2 gives up"), "rank \(rank): \(error)")
    }
  }
}

/// An engine group whose allreduce and reduce-scatter block until released, whatever aborts
/// say, as a rank inside a library that cannot be aborted does.
private final class StuckGroup: GroupCollectives {
  private let engine: any GroupCollectives
  private let stuck: ConditionLock<Bool>

  init(_ engine: any GroupCollectives, until stuck: ConditionLock<Bool>) {
    self.engine = engine
    self.stuck = stuck
  }

  var rank: Int { engine.rank }
  var size: Int { engine.size }

  private func block() {
    _ = stuck.wait(until: .after(.seconds(20))) { $0 ? true : nil }
  }

  func allReduce(_ region: DeviceRegion, dataType: DataType, op: ReduceOp) throws(KaitianError) {
    block()
    throw KaitianError(.remoteError, "the stuck library was released")
  }

  func reduceScatter(
    _ region: DeviceRegion, dataType: DataType, op: ReduceOp
  ) throws(KaitianError) {
    block()
    throw KaitianError(.remoteError, "the stuck library was released")
  }

  func allGather(_ region: DeviceRegion, dataType: DataType) throws(KaitianError) {
    try engine.allGather(region, dataType: dataType)
  }

  func broadcast(_ region: DeviceRegion, dataType: DataType, root: Int) throws(KaitianError) {
    try engine.broadcast(region, dataType: dataType, root: root)
  }

  func abort(reason: String) { engine.abort(reason: reason) }

  func destroy() { engine.destroy() }
}
