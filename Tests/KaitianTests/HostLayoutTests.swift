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
        byteCount: bytes, count: count, size: 4, ringThreshold: 1024, hosts: hosts)
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
        size: 4, layout: .hostsOfTwo, configure: { $0.hierarchicalAllReduce = enabled }
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
}
