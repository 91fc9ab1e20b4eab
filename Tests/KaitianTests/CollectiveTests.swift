import Testing

@testable import Kaitian

/// Every collective x dtype x op against the reference, at awkward sizes, for 1, 2, 3 and 5
/// ranks over shared memory, TCP, and a mix of both (ranks as threads).
@Suite struct CollectiveTests {
  static let counts = [0, 1, 7, 31, 1031]
  static let sizes = [1, 2, 3, 5]

  @Test(arguments: sizes, RankHarness.Layout.allCases)
  func reductions(size: Int, layout: RankHarness.Layout) {
    let errors = RankHarness.run(size: size, layout: layout) { comm in
      let check = CollectiveChecks(comm: comm)
      for dataType in DataType.allCases {
        for op in ReduceOp.allCases {
          for count in Self.counts {
            for inPlace in [false, true] {
              try check.allReduce(dataType, op, count: count, inPlace: inPlace)
              try check.reduce(dataType, op, count: count, root: count % size, inPlace: inPlace)
            }
            try check.reduceScatter(dataType, op, count: count)
          }
        }
      }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  @Test(arguments: sizes, RankHarness.Layout.allCases)
  func dataMovement(size: Int, layout: RankHarness.Layout) {
    let errors = RankHarness.run(size: size, layout: layout) { comm in
      let check = CollectiveChecks(comm: comm)
      for dataType in DataType.allCases {
        for count in Self.counts {
          let root = (count + 1) % size
          for inPlace in [false, true] {
            try check.broadcast(dataType, count: count, root: root, inPlace: inPlace)
            try check.allGather(dataType, count: count, inPlace: inPlace)
          }
          try check.allGatherV(dataType, count: count)
          try check.gather(dataType, count: count, root: root)
          try check.scatter(dataType, count: count, root: root)
          try check.allToAll(dataType, count: count)
          try check.allToAllV(dataType, count: count)
          try check.sendReceive(dataType, count: count)
          try comm.barrier().wait()
        }
      }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  /// Several MiB, so ring and chain algorithms wrap the (deliberately small) rings many times.
  @Test(arguments: [2, 3, 5], RankHarness.Layout.allCases)
  func largeMessages(size: Int, layout: RankHarness.Layout) {
    let errors = RankHarness.run(size: size, layout: layout) { comm in
      let check = CollectiveChecks(comm: comm)
      let count = 786_433  // prime; 3 MiB of float32
      for dataType in [DataType.float32, .bfloat16] {
        try check.allReduce(dataType, .sum, count: count, inPlace: false)
        try check.allReduce(dataType, .max, count: count, inPlace: true)
        try check.reduce(dataType, .sum, count: count, root: size - 1, inPlace: false)
        try check.broadcast(dataType, count: count, root: 1, inPlace: false)
        try check.allGather(dataType, count: count / size, inPlace: false)
        try check.reduceScatter(dataType, .sum, count: count / size)
      }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }
}
