import Testing

@testable import Kaitian

/// The 64-byte tag: every kind's detail survives the wire, and bytes that carry a detail where
/// the kind has none are not a tag.
@Suite struct OpHeaderTests {
  static func header(_ kind: CollectiveKind, _ detail: TagDetail) -> OpHeader {
    OpHeader(
      kind: kind, sequence: 7, dataType: .float32, op: .sum, count: 1031, root: 2, detail: detail,
      sender: 3)
  }

  static func detail(for kind: CollectiveKind) -> TagDetail {
    switch kind {
    case .sendRecv: .messageTag(-5)
    case .allGatherV: .countsDigest(0x1234_5678_9ABC)
    case .allToAllV: .linkCount(31)
    case .allReduce: .algorithm(AllReduce.Algorithm.ring.tagValue)
    default: .none
    }
  }

  @Test(arguments: CollectiveKind.allCases)
  func everyKindRoundTrips(kind: CollectiveKind) {
    let header = Self.header(kind, Self.detail(for: kind))
    var bytes = [UInt8](repeating: 0, count: OpHeader.byteCount)
    bytes.withUnsafeMutableBytes { header.encode(into: $0) }
    #expect(bytes.withUnsafeBytes { OpHeader.decode($0) } == header)
  }

  @Test func aDetailOnAKindWithoutOneIsNotATag() {
    #expect(TagDetail(kind: .broadcast, wireValue: 5) == nil)
    #expect(TagDetail(kind: .broadcast, wireValue: 0) == TagDetail.none)
    var bytes = [UInt8](repeating: 0, count: OpHeader.byteCount)
    bytes.withUnsafeMutableBytes { Self.header(.sendRecv, .messageTag(5)).encode(into: $0) }
    bytes[7] = CollectiveKind.broadcast.rawValue  // the same slot, read as a broadcast's
    #expect(bytes.withUnsafeBytes { OpHeader.decode($0) } == nil)
  }

  @Test func aMismatchNamesTheDetail() {
    let mine = Self.header(.allToAllV, .linkCount(31))
    let theirs = Self.header(.allToAllV, .linkCount(30))
    let text = mine.mismatch(with: theirs, peer: 1, localRank: 0)
    #expect(text == "element count between the two ranks 31 on rank 0 but 30 on rank 1")
  }

  @Test func anAllreduceAlgorithmMismatchIsSaidInWords() throws {
    let hosts = try #require(HostLayout(identities: ["a", "a", "b", "b"]))
    let mine = Self.header(
      .allReduce, .algorithm(AllReduce.Algorithm.hierarchical(hosts, segmentBytes: 4096).tagValue))
    let theirs = Self.header(.allReduce, .algorithm(AllReduce.Algorithm.ring.tagValue))
    #expect(
      mine.mismatch(with: theirs, peer: 1, localRank: 0)
        == "allreduce algorithm hierarchical in segments of 4096 bytes on rank 0 but ring on rank 1"
    )
    #expect(AllReduce.Algorithm.describe(tagValue: 1) == "recursive doubling")
    #expect(AllReduce.Algorithm.describe(tagValue: 0) == "unknown (0)")
  }
}
