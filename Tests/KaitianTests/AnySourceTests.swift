import Glibc
import KaitianVerification
import Testing

@testable import Kaitian

/// Receives from any rank beyond the collective matrix (which checks sources, data and a tag
/// passed over): tags of other calls that a receive from any rank reads ahead, and its errors.
@Suite struct AnySourceTests {
  /// Rank 2 enters an allreduce while rank 0 still waits for a send from any rank: rank 0 reads
  /// the allreduce's tag from rank 2 while it looks for the sender, and the allreduce must still
  /// find it there afterwards.
  @Test(arguments: RankHarness.Layout.transports)
  func aCollectivesTagReadAheadStillReachesTheCollective(layout: RankHarness.Layout) {
    let errors = RankHarness.run(size: 3, layout: layout) { comm in
      let count = 4096
      let value = ElementBuffer(.float32, count: count) { _ in Double(comm.rank + 1) }
      if comm.rank == 1 {
        usleep(50_000)  // rank 2's allreduce tag reaches rank 0 first
        try comm.send(value.raw, count: count, dataType: .float32, to: 0, tag: 5).wait()
      }
      if comm.rank == 0 {
        let received = ElementBuffer(.float32, count: count)
        let work = try comm.receiveFromAny(
          into: received.raw, count: count, dataType: .float32, tag: 5)
        try work.wait()
        #expect(work.source == 1)
        try expectElements(received, "from rank 1") { _ in 2 }
      }
      try comm.allReduce(value.raw, into: value.raw, count: count, dataType: .float32, op: .sum)
        .wait()
      try expectElements(value, "allreduce on rank \(comm.rank)") { _ in 6 }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  /// A plain receive names its peer as the source too, and other calls have none.
  @Test func plainReceivesNameTheirPeer() {
    let errors = RankHarness.run(size: 2) { comm in
      var byte: UInt8 = 7
      if comm.rank == 0 {
        let work = try comm.receive(into: &byte, count: 1, dataType: .uint8, from: 1)
        try work.wait()
        #expect(work.source == 1)
      } else {
        let work = try comm.send(&byte, count: 1, dataType: .uint8, to: 0)
        try work.wait()
        #expect(work.source == nil)
      }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  /// Nobody sends: the receive times out naming the call and the ranks it waited for.
  @Test func aReceiveNobodyMatchesTimesOutNamingTheCall() {
    let errors = RankHarness.run(size: 3, timeoutSeconds: 1) { comm in
      var byte: UInt8 = 0
      if comm.rank == 0 {
        try comm.receiveFromAny(into: &byte, count: 1, dataType: .uint8, tag: 3).wait()
      } else {
        usleep(1_500_000)
      }
    }
    let message = errors[0] ?? ""
    #expect(message.contains("rank 0: recv from any rank (uint8 x 1, tag 3)"), "\(message)")
    #expect(message.contains("waiting for a matching send from any of ranks [1, 2]"), "\(message)")
  }

  @Test func aCommunicatorOfOneRankHasNobodyToReceiveFrom() {
    let errors = RankHarness.run(size: 1) { comm in
      var byte: UInt8 = 0
      #expect(throws: KaitianError.self) {
        try comm.receiveFromAny(into: &byte, count: 1, dataType: .uint8)
      }
    }
    #expect(errors == [nil])
  }
}
