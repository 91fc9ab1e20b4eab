import Glibc
import KaitianPOSIX
import KaitianStore
import KaitianVerification
import Synchronization
import Testing

@testable import Kaitian

/// KAITIAN_INTEGRITY: everything sent over TCP goes in records MAC'd under the connection's keys. The
/// collectives still give the reference's results with it, and data changed on the network
/// path fails the call on the receiving rank, naming the sender, where without it the ranks
/// would train on the changed data.
@Suite struct FrameIntegrityTests {
  /// 2 ranks over TCP, and 3 with shared memory beside TCP (hashing in a debug build is slow,
  /// so not every size x layout as in CollectiveTests).
  @Test(arguments: zip([2, 3], [RankHarness.Layout.tcp, .mixed]))
  func collectivesMatchTheReferenceWithFrameMACs(size: Int, layout: RankHarness.Layout) {
    let errors = RankHarness.run(
      size: size, layout: layout, configure: { $1.frameIntegrity = true }
    ) { comm in
      let checks = CollectiveChecks(comm: comm)
      try checks.reductionMatrix(counts: CollectiveTests.counts)
      try checks.dataMovementMatrix(counts: CollectiveTests.counts)
      // 800 KB, so a message spans several records (256 KiB each), a ring chunk included.
      try checks.largeMessages(count: 200_003, dataTypes: [.float32])
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors.compactMap { $0 })")
  }

  static let count = 16 * 1024

  /// What each rank of an allreduce through a tampering proxy got: its error, or its result.
  private struct Outcome: Sendable {
    var error: String?
    var result: [Float] = []
  }

  /// Two ranks over TCP; rank 1 reaches rank 0 through a proxy that flips one byte of what
  /// rank 1 sends once more than 4 KiB have gone through (past the handshake, inside the
  /// allreduce's data).
  private func allReduceThroughATamperingProxy(integrity: Bool) throws -> [Outcome] {
    let store = InMemoryStore()
    let prefix = "tamper-\(UInt64.random(in: 0...UInt64.max))"
    let outcomes = Mutex<[Outcome]>([Outcome(), Outcome()])
    let count = Self.count
    func start(_ rank: Int) throws -> OSThread {
      try OSThread.spawn(name: "rank \(rank)") {
        let options = CommunicatorOptions(
          hostIdentity: "host-\(rank)", timeoutSeconds: 10, advertisedHost: "127.0.0.1",
          storePrefix: prefix, frameIntegrity: integrity)
        do {
          let comm = try Communicator(
            store: store, rank: rank, size: 2, token: RankHarness.token, options: options)
          defer { comm.destroy() }
          var values = (0..<count).map { Float($0 % 97 + rank) }
          try values.withUnsafeMutableBytes { buffer in
            try comm.allReduce(
              buffer.baseAddress!, into: buffer.baseAddress!, count: count, dataType: .float32,
              op: .sum
            ).wait()
          }
          outcomes.withLock { $0[rank].result = values }
        } catch {
          outcomes.withLock { $0[rank].error = "\(error)" }
        }
      }
    }
    let rank0 = try start(0)
    let rendezvous = AuthenticatedRendezvous(store, token: RankHarness.token)
    let key = "\(prefix)/endpoint/0"
    let real = try #require(
      PeerEndpoint(decoding: try rendezvous.get(key: key, timeout: .seconds(10))))
    let proxy = try TamperingProxy(to: real, flipAfter: 4096)
    // The path to rank 0 now goes through the proxy (a test stands in for a router here; the
    // store is the job's own, written with its token).
    var detour = real
    detour.port = proxy.port
    try rendezvous.set(key: key, value: detour.encoded)
    let rank1 = try start(1)
    rank1.join()
    rank0.join()
    proxy.stop()
    return outcomes.withLock { $0 }
  }

  @Test func aChangedFrameFailsTheCallOnTheRankThatReceivedIt() throws {
    let outcomes = try allReduceThroughATamperingProxy(integrity: true)
    let error = try #require(outcomes[0].error, "rank 0 accepted changed data")
    #expect(error.contains("rank 0"), "\(error)")
    #expect(error.contains("allreduce #1"), "\(error)")
    #expect(error.contains("data from rank 1 failed its integrity check"), "\(error)")
    #expect(outcomes[1].error != nil, "rank 1 finished an allreduce that failed on rank 0")
  }

  /// The attack the MACs stop: without them the allreduce succeeds with a wrong sum.
  @Test func withoutFrameMACsTheChangeGoesUnnoticed() throws {
    let outcomes = try allReduceThroughATamperingProxy(integrity: false)
    #expect(outcomes.allSatisfy { $0.error == nil }, "\(outcomes.map(\.error))")
    let expected = (0..<Self.count).map { Float(2 * ($0 % 97) + 1) }
    #expect(outcomes.contains { $0.result != expected }, "the changed byte did not arrive")
  }

  /// The rank that connects learns it at once; the rank that accepts cannot tell a peer set up
  /// differently from a stranger (the purpose is read before the token's proof), so it waits
  /// out its timeout and then names the refused connection.
  @Test func ranksThatDisagreeAboutFrameMACsAreToldWhy() {
    let errors = RankHarness.run(
      size: 2, layout: .tcp, timeoutSeconds: 3,
      configure: { _, options in options.frameIntegrity = options.hostIdentity == "host-1" }
    ) { _ in }
    #expect(
      errors[1]?.contains("KAITIAN_INTEGRITY must be set alike on every rank") == true,
      "\(errors)")
    #expect(errors[0]?.contains("kaitian-peer+integrity") == true, "\(errors)")
  }
}

/// Forwards TCP connections to `target`, flipping one bit of the client-to-server stream at
/// byte `flipAfter`: a router on the path that changes data.
private final class TamperingProxy: Sendable {
  let port: UInt16
  private let listener: TCPSocket
  private let stopped = Atomic<Bool>(false)
  private let acceptor = Mutex<OSThread?>(nil)

  init(to target: PeerEndpoint, flipAfter: Int) throws {
    listener = try TCPSocket.listen(host: "127.0.0.1", port: 0)
    port = listener.localPort
    let thread = try OSThread.spawn(name: "proxy accept") { [self] in
      while !stopped.load(ordering: .relaxed) {
        guard let client = try? listener.accept(deadline: .after(.milliseconds(100))),
          let server = try? TCPSocket.connect(
            host: target.host, port: target.port, deadline: .after(.seconds(5)))
        else { continue }
        try? OSThread.detach(name: "proxy up") {
          self.pump(from: client, to: server, flipAt: flipAfter)
        }
        try? OSThread.detach(name: "proxy down") {
          self.pump(from: server, to: client, flipAt: nil)
        }
      }
    }
    acceptor.withLock { $0 = thread }
  }

  func stop() {
    stopped.store(true, ordering: .relaxed)
    listener.shutdown()
    acceptor.withLock { $0?.join() }
  }

  private func pump(from source: TCPSocket, to sink: TCPSocket, flipAt: Int?) {
    var buffer = [UInt8](repeating: 0, count: 64 * 1024)
    var forwarded = 0
    defer {
      source.shutdown()
      sink.shutdown()
    }
    while !stopped.load(ordering: .relaxed) {
      let received: Int
      do {
        received = try buffer.withUnsafeMutableBytes { try source.receiveSome(into: $0) }
      } catch {
        return
      }
      if received == 0 {
        source.withFileDescriptor { descriptor in
          var ready = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
          _ = poll(&ready, 1, 50)
        }
        continue
      }
      if let flipAt, forwarded <= flipAt, flipAt < forwarded + received {
        buffer[flipAt - forwarded] ^= 0x10
      }
      forwarded += received
      do {
        try buffer.withUnsafeBytes {
          try sink.writeAll(
            UnsafeRawBufferPointer(rebasing: $0[..<received]), deadline: .after(.seconds(5)))
        }
      } catch {
        return
      }
    }
  }
}
