import KaitianVerification
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
      try CollectiveChecks(comm: comm).reductionMatrix(counts: Self.counts)
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  @Test(arguments: sizes, RankHarness.Layout.allCases)
  func dataMovement(size: Int, layout: RankHarness.Layout) {
    let errors = RankHarness.run(size: size, layout: layout) { comm in
      try CollectiveChecks(comm: comm).dataMovementMatrix(counts: Self.counts)
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  /// Several MiB, so ring and chain algorithms wrap the (deliberately small) rings many times.
  @Test(arguments: [2, 3, 5], RankHarness.Layout.allCases)
  func largeMessages(size: Int, layout: RankHarness.Layout) {
    let errors = RankHarness.run(size: size, layout: layout) { comm in
      try CollectiveChecks(comm: comm).largeMessages()
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }
}
