import KaitianVerification
import Testing

@testable import Kaitian

/// Every collective x dtype x op against the reference, at awkward sizes, for 1, 2, 3 and 5
/// ranks over shared memory, TCP, and a mix of both, and for 4 and 6 ranks on hosts of equal
/// rank counts (ranks as threads). One case per ranks x
/// transport x dtype, and inside a case every wrong op and count is reported, not just the first.
@Suite struct CollectiveTests {
  static let counts = [0, 1, 7, 31, 1031]
  static let sizes = [1, 2, 3, 5]

  /// Ranks and transport: the first argument of the matrix cases.
  struct Setup: Sendable, CustomTestStringConvertible {
    let size: Int
    let layout: RankHarness.Layout
    var testDescription: String { "\(size) ranks, \(layout)" }

    /// Every size with every mix of transports, and the host shapes in which the hierarchical
    /// allreduce runs: 2 hosts of 2, 3 hosts of 2, 2 hosts of 3.
    static let all =
      sizes.flatMap { size in
        RankHarness.Layout.transports.map { Setup(size: size, layout: $0) }
      } + [
        Setup(size: 4, layout: .hostsOfTwo), Setup(size: 6, layout: .hostsOfTwo),
        Setup(size: 6, layout: .hostsOfThree),
      ]
  }

  @Test(arguments: Setup.all, DataType.allCases)
  func reductions(setup: Setup, dataType: DataType) {
    let errors = RankHarness.run(size: setup.size, layout: setup.layout) { comm in
      try CollectiveChecks(comm: comm).reductionMatrix(counts: Self.counts, dataTypes: [dataType])
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  @Test(arguments: Setup.all, DataType.allCases)
  func dataMovement(setup: Setup, dataType: DataType) {
    let errors = RankHarness.run(size: setup.size, layout: setup.layout) { comm in
      try CollectiveChecks(comm: comm).dataMovementMatrix(
        counts: Self.counts, dataTypes: [dataType])
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  /// Several MiB, so ring and chain algorithms wrap the (deliberately small) rings many times.
  @Test(
    arguments: [2, 3, 5].flatMap { size in RankHarness.Layout.transports.map { (size, $0) } } + [
      (4, .hostsOfTwo), (6, .hostsOfTwo), (6, .hostsOfThree),
    ])
  func largeMessages(size: Int, layout: RankHarness.Layout) {
    let errors = RankHarness.run(size: size, layout: layout) { comm in
      try CollectiveChecks(comm: comm).largeMessages()
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }
}
