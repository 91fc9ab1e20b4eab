import Glibc
import KaitianPOSIX
import KaitianStore
import Synchronization
import Testing

@testable import Kaitian

/// The port each rank listens on for its peers: reachable at the advertised address only, and
/// not stalled by connections that never finish their handshake.
@Suite struct PeerListenerTests {
  /// Rank 0 of a 2-rank TCP communicator starts alone; `meanwhile` runs with its endpoint once
  /// published, then rank 1 starts. Returns how long rank 1 took to join, and each rank's error.
  private func twoRanks(
    timeoutSeconds: Double = 10, meanwhile: (PeerEndpoint) throws -> Void
  ) throws -> (Duration, [String?]) {
    let store = InMemoryStore()
    let prefix = "listener-\(UInt64.random(in: 0...UInt64.max))"
    let errors = Mutex<[String?]>([nil, nil])
    func start(_ rank: Int) throws -> OSThread {
      try OSThread.spawn(name: "rank \(rank)") {
        let options = CommunicatorOptions(
          hostIdentity: "host-\(rank)", timeoutSeconds: timeoutSeconds,
          advertisedHost: "127.0.0.1", storePrefix: prefix)
        do {
          let comm = try Communicator(
            store: store, rank: rank, size: 2, token: RankHarness.token, options: options)
          comm.destroy()
        } catch {
          errors.withLock { $0[rank] = "\(error)" }
        }
      }
    }
    let first = try start(0)
    let published = try AuthenticatedRendezvous(store, token: RankHarness.token).get(
      key: "\(prefix)/endpoint/0", timeout: .seconds(10))
    let endpoint = try #require(PeerEndpoint(decoding: published))
    try meanwhile(endpoint)
    let started = ContinuousClock.now
    let second = try start(1)
    second.join()
    let joined = ContinuousClock.now - started
    first.join()
    return (joined, errors.withLock { $0 })
  }

  /// Connections that say nothing, as a port scan or an attacker's would.
  private func idleConnections(_ count: Int, to endpoint: PeerEndpoint) throws -> [TCPSocket] {
    try (0..<count).map { _ in
      try TCPSocket.connect(host: endpoint.host, port: endpoint.port, deadline: .after(.seconds(5)))
    }
  }

  @Test func idleConnectionsDoNotDelayTheRanks() throws {
    var idle: [TCPSocket] = []
    let (joined, errors) = try twoRanks { endpoint in
      // One at a time with 5 s each, these held start-up for 50 s, past the 10 s timeout.
      idle = try idleConnections(10, to: endpoint)
      usleep(200_000)  // accepted and handshaking before rank 1 arrives
    }
    #expect(errors == [nil, nil], "\(errors)")
    #expect(joined < .seconds(1), "rank 1 took \(joined) to join past 10 idle connections")
    withExtendedLifetime(idle) {}
  }

  @Test func moreIdleConnectionsThanHandshakeSlotsCostOneHandshakeTimeout() throws {
    var idle: [TCPSocket] = []
    let (joined, errors) = try twoRanks { endpoint in
      idle = try idleConnections(Mesh.maxConcurrentHandshakes + 8, to: endpoint)
      usleep(200_000)
    }
    #expect(errors == [nil, nil], "\(errors)")
    // The first slots' handshakes time out together; then the backlog, rank 1's included, is
    // taken up at once.
    #expect(joined < Mesh.handshakeTimeout + .seconds(2), "rank 1 took \(joined) to join")
    withExtendedLifetime(idle) {}
  }

  @Test func theListenerTakesConnectionsAtTheAdvertisedAddressOnly() throws {
    let (_, errors) = try twoRanks { endpoint in
      #expect(endpoint.host == "127.0.0.1")
      // 127.0.0.2 is this host too (all of 127/8 is loopback), but not the advertised address.
      // (connect retries a refusal until its deadline, then names the last one.)
      let elsewhere = #expect(throws: SocketError.self) {
        _ = try TCPSocket.connect(
          host: "127.0.0.2", port: endpoint.port, deadline: .after(.milliseconds(300)))
      }
      #expect(
        elsewhere?.description.contains("Connection refused") == true,
        "\(String(describing: elsewhere))")
    }
    #expect(errors == [nil, nil], "\(errors)")
  }
}
