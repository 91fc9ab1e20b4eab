import Glibc
import KaitianStore
import Synchronization
import Testing

@testable import Kaitian

/// Bad input and faults: each gives a clear error naming the rank, the call and the cause,
/// on every rank, within the timeout; never a hang or wrong data.
@Suite struct ErrorTests {
  /// Runs `body` on `size` ranks, each of which must fail; returns each rank's error.
  private func failures(
    size: Int = 3, layout: RankHarness.Layout = .sharedMemory, timeout: Double = 10,
    _ body: @escaping @Sendable (Communicator) throws -> Void
  ) -> [KaitianError?] {
    let errors = Mutex<[KaitianError?]>(Array(repeating: nil, count: size))
    let outcomes = RankHarness.run(size: size, layout: layout, timeoutSeconds: timeout) { comm in
      do {
        try body(comm)
      } catch let error as KaitianError {
        errors.withLock { $0[comm.rank] = error }
      }
    }
    #expect(outcomes.allSatisfy { $0 == nil }, "unexpected non-Kaitian errors: \(outcomes)")
    return errors.withLock { $0 }
  }

  private func allReduce(
    _ comm: Communicator, count: Int, dataType: DataType = .float32, op: ReduceOp = .sum
  ) throws {
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 8, alignment: 64)
    defer { buffer.deallocate() }
    try comm.allReduce(buffer, into: buffer, count: count, dataType: dataType, op: op).wait()
  }

  @Test(arguments: RankHarness.Layout.transports)
  func countMismatchIsReportedOnEveryRank(layout: RankHarness.Layout) throws {
    let errors = failures(layout: layout) { comm in
      try allReduce(comm, count: comm.rank == 1 ? 11 : 10)
    }
    for (rank, error) in errors.enumerated() {
      let error = try #require(error, "rank \(rank) did not fail")
      #expect(error.code == .mismatch, "\(error)")
      #expect(error.description.contains("rank \(rank)"), "\(error)")
      #expect(error.description.contains("allreduce #1"), "\(error)")
      #expect(error.description.contains("count 1"), "\(error)")
      #expect(error.description.contains("rank 1"), "\(error)")
    }
  }

  @Test func dtypeOpAndRootMismatchesNameTheField() {
    let dtype = failures(size: 2) { comm in
      try allReduce(comm, count: 4, dataType: comm.rank == 0 ? .float32 : .int32)
    }
    #expect(
      dtype.allSatisfy {
        $0?.description.contains("dtype float32 on rank") == true
          || $0?.description.contains("dtype int32 on rank") == true
      }, "\(dtype)")
    let op = failures(size: 2) { comm in
      try allReduce(comm, count: 4, op: comm.rank == 0 ? .sum : .max)
    }
    #expect(
      op.allSatisfy { $0?.code == .mismatch && $0?.description.contains("op ") == true }, "\(op)")
    let root = failures(size: 2) { comm in
      let buffer = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
      defer { buffer.deallocate() }
      try comm.broadcast(buffer, into: buffer, count: 4, dataType: .float32, root: comm.rank).wait()
    }
    #expect(
      root.allSatisfy { $0?.code == .mismatch && $0?.description.contains("root") == true },
      "\(root)")
  }

  @Test func differentOrderOrASkippedCallIsAMismatch() {
    let order = failures(size: 2) { comm in
      if comm.rank == 0 {
        try comm.barrier().wait()
        try allReduce(comm, count: 4)
      } else {
        try allReduce(comm, count: 4)
        try comm.barrier().wait()
      }
    }
    #expect(
      order.allSatisfy { $0?.code == .mismatch && $0?.description.contains("call") == true },
      "\(order)")
    let skipped = failures(size: 2) { comm in
      if comm.rank == 0 { try comm.barrier().wait() }
      try allReduce(comm, count: 4)
    }
    #expect(skipped.allSatisfy { $0?.code == .mismatch }, "\(skipped)")
  }

  @Test func callsAfterAFailureFailAtOnce() {
    let errors = failures(size: 2) { comm in
      try? allReduce(comm, count: comm.rank == 0 ? 1 : 2)
      try allReduce(comm, count: 4)
    }
    #expect(
      errors.allSatisfy {
        $0?.description.contains("not run: the communicator already failed") == true
      }, "\(errors)")
  }

  @Test func aMissingPeerTimesOutNamingIt() throws {
    let start = ContinuousClock.now
    let errors = failures(size: 2, layout: .tcp, timeout: 1.5) { comm in
      if comm.rank == 0 {
        try allReduce(comm, count: 4)
      } else {
        // Rank 1 never joins the call; it fails once rank 0 gives up and tells it.
        try comm.barrier().wait()
      }
    }
    let elapsed = ContinuousClock.now - start
    let first = try #require(errors[0])
    #expect(first.code == .timeout || first.code == .mismatch, "\(first)")
    #expect(errors[1] != nil)
    #expect(elapsed < .seconds(10), "took \(elapsed)")
  }

  @Test func aStalledPeerTimesOut() throws {
    let errors = failures(size: 2, timeout: 1) { comm in
      if comm.rank == 1 { usleep(2_500_000) }
      try allReduce(comm, count: 4)
    }
    let first = try #require(errors[0])
    #expect(first.code == .timeout, "\(first)")
    #expect(first.description.contains("rank 0: allreduce #1"), "\(first)")
    #expect(first.description.contains("rank 1"), "\(first)")
  }

  @Test func abortReachesEveryRank() {
    let errors = failures(size: 3) { comm in
      if comm.rank == 2 {
        usleep(100_000)
        comm.abort(reason: "test says stop")
        try allReduce(comm, count: 4)
      } else {
        try allReduce(comm, count: 4)
      }
    }
    #expect(errors.allSatisfy { $0?.description.contains("test says stop") == true }, "\(errors)")
  }

  @Test func invalidArgumentsAreRefusedBeforeQueuing() throws {
    let outcomes = RankHarness.run(size: 2) { comm in
      let buffer = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
      defer { buffer.deallocate() }
      #expect(throws: KaitianError.self) {
        try comm.allReduce(buffer, into: buffer, count: -1, dataType: .float32, op: .sum)
      }
      #expect(throws: KaitianError.self) {
        try comm.broadcast(buffer, into: buffer, count: 1, dataType: .float32, root: 5)
      }
      #expect(throws: KaitianError.self) {
        try comm.send(buffer, count: 1, dataType: .float32, to: comm.rank)
      }
      // The communicator is still usable.
      try comm.barrier().wait()
    }
    #expect(outcomes.allSatisfy { $0 == nil }, "\(outcomes)")
  }

  /// Someone who can write the store but lacks the job token publishes rank 1's endpoint
  /// (pointing at a socket of theirs): rank 0 refuses it at once instead of connecting.
  @Test func aForgedEndpointInTheStoreIsRefused() throws {
    let store = InMemoryStore()
    let impostor = PeerEndpoint(
      host: "127.0.0.1", port: 9, hostIdentity: "host-1", processID: getpid())
    try store.set(key: "forged/endpoint/1", value: impostor.encoded)
    let start = ContinuousClock.now
    let error = #expect(throws: KaitianError.self) {
      _ = try Communicator(
        store: store, rank: 0, size: 2, token: RankHarness.token,
        options: CommunicatorOptions(
          hostIdentity: "host-0", timeoutSeconds: 10, advertisedHost: "127.0.0.1",
          storePrefix: "forged"))
    }
    #expect(
      error?.description.contains("'forged/endpoint/1' failed its job-token check") == true,
      "\(String(describing: error))")
    #expect(ContinuousClock.now - start < .seconds(5), "refused, not timed out")
  }
}
