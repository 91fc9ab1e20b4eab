import Glibc
import KaitianVerification
import Testing

@testable import Kaitian

/// Which jobs get the hierarchical allreduce, and the rings it runs over.
@Suite struct HostLayoutTests {
  @Test func equalHostsOfTwoOrMoreRanksHaveALayout() throws {
    let layout = try #require(HostLayout(identities: ["b", "a", "b", "a"]))
    // Hosts in the order of their lowest rank, ranks ascending.
    #expect(layout.hosts == [[0, 2], [1, 3]])
    #expect(layout.hostRing(of: 2) == RingMembers(ranks: [0, 2], position: 1))
    #expect(layout.columnRing(of: 2) == RingMembers(ranks: [2, 3], position: 0))
    #expect(layout.columnRing(of: 1) == RingMembers(ranks: [0, 1], position: 1))
    let three = try #require(HostLayout(identities: ["x", "x", "y", "y", "z", "z"]))
    #expect(three.columnRing(of: 5) == RingMembers(ranks: [1, 3, 5], position: 2))
    #expect(three.columnRing(of: 5).right == 1 && three.columnRing(of: 5).left == 3)
  }

  @Test(arguments: [
    ["a", "a", "a"],  // one host
    ["a", "b", "c"],  // one rank per host: the flat ring is already one hop per host
    ["a", "a", "b"],  // unequal hosts
    ["a", "a", "b", "b", "b"],
    [],
  ])
  func otherShapesHaveNone(identities: [String]) {
    #expect(HostLayout(identities: identities) == nil)
  }

  @Test func largeAllreducesOfEqualHostsGoHierarchical() throws {
    let hosts = try #require(HostLayout(identities: ["a", "a", "b", "b"]))
    let choose = { (bytes: Int, count: Int, hosts: HostLayout?) in
      AllReduce.choose(
        byteCount: bytes, count: count, size: 4, ringThreshold: 1024, hosts: hosts,
        segmentBytes: 1 << 20)
    }
    #expect(choose(4096, 1024, hosts) == .hierarchical(hosts, segmentBytes: 1 << 20))
    #expect(choose(4096, 1024, nil) == .ring)
    #expect(choose(512, 128, hosts) == .recursiveDoubling)
    // Fewer elements than ranks would leave pieces empty.
    #expect(choose(4096, 3, hosts) == .recursiveDoubling)
  }

  @Test func communicatorsLearnTheLayoutUnlessItIsSwitchedOff() {
    for enabled in [true, false] {
      let errors = RankHarness.run(
        size: 4, layout: .hostsOfTwo, configure: { $1.hierarchicalAllReduce = enabled }
      ) { comm in
        let expected = enabled ? [[0, 1], [2, 3]] : nil
        guard comm.hostLayout?.hosts == expected else {
          throw KaitianError(.internalError, "layout \(String(describing: comm.hostLayout))")
        }
      }
      #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
    }
  }

  @Test func theSwitchAndTheSegmentSizeAreReadFromTheEnvironment() throws {
    #expect(try CommunicatorOptions.from { _ in nil }.hierarchicalAllReduce)
    let off = try CommunicatorOptions.from { $0 == "KAITIAN_HIERARCHICAL" ? "0" : nil }
    #expect(!off.hierarchicalAllReduce)
    let segments = try CommunicatorOptions.from {
      $0 == "KAITIAN_HIERARCHICAL_SEGMENT_BYTES" ? "65536" : nil
    }
    #expect(segments.hierarchicalSegmentBytes == 65536)
    #expect(throws: KaitianError.self) {
      try CommunicatorOptions.from { $0 == "KAITIAN_HIERARCHICAL_SEGMENT_BYTES" ? "0" : nil }
    }
    #expect(throws: KaitianError.self) {
      try CommunicatorOptions.from { $0 == "KAITIAN_HIERARCHICAL" ? "maybe" : nil }
    }
  }

  /// The pipeline at its extremes: one segment (every allreduce up to the segment size takes
  /// it), and segments of 1 byte, which the element count per rank bounds (1 element per rank).
  @Test(arguments: [1, 1 << 20])
  func segmentsOfAnySizeGiveTheReference(segmentBytes: Int) {
    let errors = RankHarness.run(
      size: 4, layout: .hostsOfTwo, configure: { $1.hierarchicalSegmentBytes = segmentBytes }
    ) { comm in
      try CollectiveChecks(comm: comm).reductionMatrix(
        counts: [4, 5, 1031], dataTypes: [.float32, .int8])
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  /// Sums of values with long fractions depend on their order: every rank must still end with
  /// the same bits. Each rank compares its result with every other's through an allreduce of
  /// the bit patterns as integers: max == min only where all ranks agree.
  @Test(arguments: [RankHarness.Layout.hostsOfTwo, .hostsOfThree])
  func inexactSumsAreBitwiseIdenticalOnEveryRank(layout: RankHarness.Layout) {
    let count = 100_003
    let errors = RankHarness.run(size: 6, layout: layout) { comm in
      var input = (0..<count).map { Float(sin(Double($0 * (comm.rank + 3)))) * 1000.1 }
      var sums = [Float](repeating: 0, count: count)
      var highest = [Int32](repeating: 0, count: count)
      var lowest = [Int32](repeating: 0, count: count)
      try input.withUnsafeMutableBytes { input in
        try sums.withUnsafeMutableBytes { sums in
          try comm.allReduce(
            input.baseAddress!, into: sums.baseAddress!, count: count, dataType: .float32, op: .sum
          ).wait()
          try highest.withUnsafeMutableBytes { highest in
            try comm.allReduce(
              sums.baseAddress!, into: highest.baseAddress!, count: count, dataType: .int32,
              op: .max
            ).wait()
          }
          try lowest.withUnsafeMutableBytes { lowest in
            try comm.allReduce(
              sums.baseAddress!, into: lowest.baseAddress!, count: count, dataType: .int32,
              op: .min
            ).wait()
          }
        }
      }
      guard let first = (0..<count).first(where: { highest[$0] != lowest[$0] }) else { return }
      throw KaitianError(
        .internalError, "rank \(comm.rank): element \(first) differs between ranks")
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  /// A rank with the hierarchical allreduce off, or with another segment size, fails the call
  /// at once as a mismatch that names the algorithms, on every rank, instead of hanging until
  /// the timeout or reading another segment's bytes.
  @Test(
    arguments: [
      { (options: inout CommunicatorOptions) in options.hierarchicalAllReduce = false },
      { (options: inout CommunicatorOptions) in options.hierarchicalSegmentBytes = 2048 },
    ] as [@Sendable (inout CommunicatorOptions) -> Void])
  func ranksThatChoseDifferentlyFailAsAMismatch(
    change: @escaping @Sendable (inout CommunicatorOptions) -> Void
  ) {
    let started = ContinuousClock.now
    let errors = RankHarness.run(
      size: 4, layout: .hostsOfTwo, timeoutSeconds: 30,
      configure: { rank, options in if rank == 2 { change(&options) } }
    ) { comm in
      let buffer = UnsafeMutableRawPointer.allocate(byteCount: 4096 * 4, alignment: 64)
      defer { buffer.deallocate() }
      buffer.initializeMemory(as: Float.self, repeating: 1, count: 4096)
      try comm.allReduce(buffer, into: buffer, count: 4096, dataType: .float32, op: .sum).wait()
    }
    #expect(errors.allSatisfy { $0 != nil }, "a rank succeeded: \(errors)")
    #expect(
      errors.contains { $0?.contains("allreduce algorithm") == true }, "\(errors.compactMap { $0 })"
    )
    #expect(ContinuousClock.now - started < .seconds(15), "not at once: \(errors)")
  }
}
