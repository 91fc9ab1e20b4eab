import Glibc
import KaitianPOSIX
import KaitianStore
import KaitianVerification
import Synchronization
import Testing

@testable import Kaitian

/// The hybrid communicator: topology, every collective across groups against the reference,
/// bitwise identical results, and errors, for equal, unequal and single-rank groups.
@Suite struct HybridTests {
  static let counts = [0, 1, 7, 1031]
  typealias Layout = HybridHarness.Layout

  // MARK: Topology

  @Test func groupsAreKindAndHostOrderedByLowestRank() {
    let declared = [
      ("npu", "a"), ("cuda", "a"), ("npu", "a"), ("cuda", "b"), ("cuda", "a"), ("npu", "a"),
    ].map { RankIdentity(deviceKind: $0.0, host: $0.1) }
    let topology = Topology(rank: 4, identities: declared)
    #expect(topology.groups.map(\.ranks) == [[0, 2, 5], [1, 4], [3]])
    #expect(topology.groups.map(\.identity) == [declared[0], declared[1], declared[3]])
    #expect(topology.groups.map(\.index) == [0, 1, 2])
    #expect(topology.group.index == 1 && topology.localRank == 1)
    #expect(topology.worldSize == 6 && topology.columns == 1 && !topology.hasEqualGroupSizes)
    #expect(topology.columnRanks(0) == [0, 1, 3])

    let equal = Topology(rank: 3, identities: Layout.equal2x2.identities)
    #expect(equal.groups.map(\.ranks) == [[0, 3], [1, 2]])
    #expect(equal.hasEqualGroupSizes && equal.columns == 2 && equal.localRank == 1)
    #expect(equal.columnRanks(1) == [3, 2])
  }

  /// Ranks publish in a random order, many times over; all derive the same groups.
  @Test func topologyDoesNotDependOnArrivalOrder() throws {
    let layout = Layout.unequal2x3
    let expected = Topology(rank: 0, identities: layout.identities).groups
    for _ in 0..<20 {
      let store = InMemoryStore()
      let seen = Mutex<[[Topology.Group]?]>(Array(repeating: nil, count: layout.size))
      let threads = (0..<layout.size).map { rank in
        try! OSThread.spawn(name: "rank \(rank)") {
          usleep(UInt32.random(in: 0...2000))
          let topology = try? Topology.exchange(
            store: store, prefix: "p", rank: rank, size: layout.size,
            identity: layout.identities[rank], timeout: .seconds(10))
          seen.withLock { $0[rank] = topology?.groups }
        }
      }
      for thread in threads { thread.join() }
      #expect(seen.withLock { $0 }.allSatisfy { $0 == expected })
    }
  }

  /// Every rank's communicator has the same groups, and the factory is asked for each rank's
  /// own group twice (the reduce stage's and the gather stage's instance), under its own
  /// prefixes.
  @Test func everyRankJoinsItsOwnGroup() {
    let layout = Layout.unequal2x3
    let memberships = Mutex<[Int: [(group: Int, local: Int, prefix: String)]]>([:])
    let topologies = Mutex<[Int: Topology]>([:])
    let recordingEngineGroup:
      @Sendable (GroupMembership) throws(KaitianError) -> any GroupCollectives = { membership in
        let made = try HybridCommunicator.engineGroup(membership)
        let global = membership.group.ranks[membership.localRank]
        memberships.withLock {
          $0[global, default: []].append(
            (membership.group.index, membership.localRank, membership.options.storePrefix))
        }
        return made
      }
    let errors = HybridHarness.run(layout, makeGroup: recordingEngineGroup) { hybrid in
      topologies.withLock { $0[hybrid.rank] = hybrid.topology }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
    let expected = Topology(rank: 0, identities: layout.identities)
    let all = topologies.withLock { $0 }
    #expect(all.count == layout.size)
    for (rank, topology) in all {
      #expect(topology == Topology(rank: rank, identities: layout.identities))
      #expect(topology.groups == expected.groups)
    }
    let made = memberships.withLock { $0 }
    #expect(made.count == layout.size, "every group has two ranks or more")
    for (rank, joined) in made {
      let topology = Topology(rank: rank, identities: layout.identities)
      let group = topology.group.index
      #expect(joined.map(\.group) == [group, group])
      #expect(joined.map(\.local) == [topology.localRank, topology.localRank])
      #expect(joined.count == 2 && joined[0].prefix.hasSuffix("/intra/\(group)"))
      #expect(joined.count == 2 && joined[1].prefix.hasSuffix("/intra/\(group)/gather"))
    }
  }

  // MARK: Collectives against the reference

  /// 40-byte chunks: every count above a few elements crosses the pipeline in many chunks.
  /// One case per layout and dtype, and every wrong op and count reported, not just the first.
  @Test(arguments: Layout.all, DataType.allCases)
  func allReduceEveryOp(layout: Layout, dataType: DataType) {
    let errors = HybridHarness.run(layout, chunkBytes: 40) { hybrid in
      var log = MismatchLog()
      for op in ReduceOp.allCases {
        for count in Self.counts {
          for inPlace in [false, true] {
            try log.check {
              try Self.allReduce(hybrid, dataType, op, count: count, inPlace: inPlace)
            }
          }
        }
      }
      try log.finish()
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  @Test(arguments: Layout.all, DataType.allCases)
  func dataMovementAndReduceScatter(layout: Layout, dataType: DataType) {
    let errors = HybridHarness.run(layout) { hybrid in
      var log = MismatchLog()
      for count in Self.counts {
        let root = (count + 1) % hybrid.size
        try log.check { try Self.broadcast(hybrid, dataType, count: count, root: root) }
        try log.check { try Self.allGather(hybrid, dataType, count: count) }
        for op in ReduceOp.allCases {
          try log.check { try Self.reduceScatter(hybrid, dataType, op, count: count) }
        }
        try hybrid.barrier().wait()
      }
      try log.finish()
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  /// Random floats, where a different order of additions would show in the low bits: every
  /// rank must end with the same bytes. Counts cross the ring threshold and need padding.
  @Test(arguments: Layout.all)
  func floatResultsAreBitwiseIdentical(layout: Layout) {
    let results = Mutex<[[UInt8]]>(Array(repeating: [], count: layout.size))
    let errors = HybridHarness.run(layout) { hybrid in
      var bytes: [UInt8] = []
      for dataType in [DataType.float16, .bfloat16, .float32, .float64] {
        for op in [ReduceOp.sum, .avg, .prod] {
          for count in [1031, 20_000] {
            let buffer = ElementBuffer(dataType, count: count) { _ in
              Double.random(in: -3...3)
            }
            try hybrid.allReduce(
              buffer.raw, into: buffer.raw, count: count, dataType: dataType, op: op
            ).wait()
            bytes += buffer.bytes
          }
        }
      }
      results.withLock { $0[hybrid.rank] = bytes }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
    let all = results.withLock { $0 }
    #expect(!all[0].isEmpty)
    for rank in 1..<layout.size {
      #expect(all[rank] == all[0], "rank \(rank)'s results differ from rank 0's")
    }
  }

  // MARK: Errors

  /// A count mismatch inside one group fails the call on every rank of every group, naming
  /// each rank and the hybrid call; later calls fail at once.
  @Test func mismatchFailsEveryRankNamingRankAndCall() {
    let layout = Layout.unequal2x1
    let failures = Mutex<[Int: (first: KaitianError, later: KaitianError)]>([:])
    let errors = HybridHarness.run(layout, timeoutSeconds: 10) { hybrid in
      let buffer = ElementBuffer(.float32, count: 11)
      let count = hybrid.rank == 2 ? 11 : 10
      do {
        try hybrid.allReduce(
          buffer.raw, into: buffer.raw, count: count, dataType: .float32, op: .sum
        )
        .wait()
        throw Unexpected("rank \(hybrid.rank): the mismatched allreduce succeeded")
      } catch let first as KaitianError {
        do {
          try hybrid.barrier().wait()
          throw Unexpected("rank \(hybrid.rank): a failed communicator ran a barrier")
        } catch let later as KaitianError {
          failures.withLock { $0[hybrid.rank] = (first, later) }
        }
      }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
    let seen = failures.withLock { $0 }
    #expect(seen.count == layout.size)
    for (rank, failure) in seen {
      #expect(failure.first.rank == rank, "\(failure.first)")
      #expect(failure.first.call == "hybrid allreduce #1 (float32 x \(rank == 2 ? 11 : 10), sum)")
      #expect(failure.later.description.contains("already failed"), "\(failure.later)")
      #expect(failure.later.call == "hybrid barrier #2", "\(failure.later)")
    }
  }

  /// Bad arguments throw when the call is issued and leave the communicator usable.
  @Test func badArgumentsThrowAtOnce() {
    let errors = HybridHarness.run(.unequal2x1) { hybrid in
      let buffer = ElementBuffer(.int32, count: 4)
      do {
        _ = try hybrid.allReduce(
          buffer.raw, into: buffer.raw, count: -1, dataType: .int32, op: .sum)
        throw Unexpected("a negative count was accepted")
      } catch let error as KaitianError {
        guard error.code == .invalidArgument, error.call == "hybrid allreduce",
          error.rank == hybrid.rank
        else { throw error }
      }
      do {
        _ = try hybrid.broadcast(buffer.raw, into: buffer.raw, count: 4, dataType: .int32, root: 3)
        throw Unexpected("root 3 of 3 ranks was accepted")
      } catch let error as KaitianError {
        guard error.code == .invalidArgument, error.call == "hybrid broadcast" else { throw error }
      }
      try Self.allReduce(hybrid, .int32, .max, count: 4, inPlace: true)
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  // MARK: Checks

  private static func input(
    _ hybrid: HybridCommunicator, _ dataType: DataType, _ op: ReduceOp, count: Int
  ) -> ElementBuffer {
    ElementBuffer(dataType, count: count) {
      Reference.value(rank: hybrid.rank, index: $0, dataType: dataType, op: op)
    }
  }

  private static func label(_ hybrid: HybridCommunicator, _ what: String) -> String {
    "hybrid \(what) on rank \(hybrid.rank) of \(hybrid.size)"
  }

  static func allReduce(
    _ hybrid: HybridCommunicator, _ dataType: DataType, _ op: ReduceOp, count: Int,
    inPlace: Bool
  ) throws {
    let source = input(hybrid, dataType, op, count: count)
    let target = inPlace ? source : ElementBuffer(dataType, count: count)
    try hybrid.allReduce(source.raw, into: target.raw, count: count, dataType: dataType, op: op)
      .wait()
    try expectElements(
      target, label(hybrid, "allreduce \(dataType) \(op) x \(count) in place \(inPlace)")
    ) {
      Reference.reduced(index: $0, size: hybrid.size, dataType: dataType, op: op)
    }
  }

  static func broadcast(
    _ hybrid: HybridCommunicator, _ dataType: DataType, count: Int, root: Int
  ) throws {
    let source = hybrid.rank == root ? input(hybrid, dataType, .sum, count: count) : nil
    let target = ElementBuffer(dataType, count: count)
    try hybrid.broadcast(
      source?.raw, into: target.raw, count: count, dataType: dataType, root: root
    ).wait()
    try expectElements(target, label(hybrid, "broadcast \(dataType) x \(count) root \(root)")) {
      Reference.value(rank: root, index: $0, dataType: dataType, op: .sum)
    }
  }

  static func allGather(_ hybrid: HybridCommunicator, _ dataType: DataType, count: Int) throws {
    let source = input(hybrid, dataType, .max, count: count)
    let target = ElementBuffer(dataType, count: count * hybrid.size)
    try hybrid.allGather(source.raw, into: target.raw, count: count, dataType: dataType).wait()
    try expectElements(target, label(hybrid, "allgather \(dataType) x \(count)")) {
      Reference.value(rank: $0 / count, index: $0 % count, dataType: dataType, op: .max)
    }
  }

  static func reduceScatter(
    _ hybrid: HybridCommunicator, _ dataType: DataType, _ op: ReduceOp, count: Int
  ) throws {
    let source = input(hybrid, dataType, op, count: count * hybrid.size)
    let target = ElementBuffer(dataType, count: count)
    try hybrid.reduceScatter(
      source.raw, into: target.raw, count: count, dataType: dataType, op: op
    ).wait()
    try expectElements(target, label(hybrid, "reduce_scatter \(dataType) \(op) x \(count)")) {
      Reference.reduced(
        index: hybrid.rank * count + $0, size: hybrid.size, dataType: dataType, op: op)
    }
  }
}

extension HybridHarness.Layout {
  var identities: [RankIdentity] {
    zip(kinds, hosts).map { RankIdentity(deviceKind: $0, host: $1) }
  }
}

/// A rank saw something succeed that should have failed.
private struct Unexpected: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}
