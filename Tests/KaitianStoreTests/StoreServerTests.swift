import Glibc
import Testing

@testable import KaitianAuth
@testable import KaitianPOSIX
@testable import KaitianStore

/// Short deadlines keep the misbehaving-client tests fast.
private let testLimits = StoreServerLimits(
  maxConnections: 64, handshakeTimeout: .milliseconds(300), responseTimeout: .seconds(2))

/// A started server plus what a client needs to reach it.
private struct Running {
  let server: StoreServer
  let host: String
  let port: UInt16
  let token: JobToken

  init(host: String = "127.0.0.1", limits: StoreServerLimits = testLimits) throws {
    token = JobToken.generate()
    server = StoreServer(host: host, port: 0, token: token, limits: limits)
    port = try server.start()
    self.host = host
  }

  func client(token: JobToken? = nil) throws(StoreError) -> StoreClient {
    try StoreClient(
      host: host, port: port, token: token ?? self.token, connectTimeout: .seconds(5),
      operationTimeout: .seconds(5), clientName: "test")
  }

  /// Passes the handshake on a raw socket, for sending hand-made frames.
  func authenticatedSocket() throws -> TCPSocket {
    let socket = try TCPSocket.connect(host: host, port: port, deadline: .after(.seconds(5)))
    try Handshake.performAsClient(
      on: socket, token: token, purpose: StoreServer.handshakePurpose,
      deadline: .after(.seconds(5)))
    return socket
  }
}

/// Asserts the server closes `socket` (end of stream) within `within`.
private func expectClosed(_ socket: TCPSocket, within: Duration) {
  while true {
    do {
      _ = try socket.readExactly(1, deadline: .after(within))
    } catch {
      #expect(error.code == .peerClosed)
      return
    }
  }
}

@Suite struct StoreServerTests {
  @Test(arguments: ["127.0.0.1", "::1"])
  func everyOperationOverTCP(host: String) throws {
    let running = try Running(host: host)
    defer { running.server.stop() }
    try checkSemantics(try running.client())
  }

  @Test func clientConnectsByAddressString() throws {
    let running = try Running(host: "::")
    defer { running.server.stop() }
    let client = try StoreClient.connect(address: "[::1]:\(running.port)", token: running.token)
    try client.set(key: "k", value: [1])
    let other = try StoreClient.connect(address: "127.0.0.1:\(running.port)", token: running.token)
    #expect(try other.tryGet(key: "k") == [1])
  }

  @Test func blockedGetIsReleasedBySetFromAnotherClient() throws {
    let running = try Running()
    defer { running.server.stop() }
    let waiter = try running.client()
    let setter = try running.client()
    let thread = try OSThread.spawn(name: "setter") {
      sleep(for: .milliseconds(100))
      try? setter.set(key: "late", value: [5])
    }
    #expect(try waiter.get(key: "late", timeout: .seconds(5)) == [5])
    thread.join()
    let timeout = #expect(throws: StoreError.self) {
      try waiter.get(key: "never", timeout: .milliseconds(100))
    }
    #expect(timeout?.code == .timeout)
    #expect(try waiter.tryGet(key: "late") == [5])  // The connection survives a timeout.
  }

  /// The server's quota on stored bytes reaches clients as a clear error; the store goes on.
  @Test func storedBytesQuota() throws {
    var limits = testLimits
    limits.maxStoredBytes = 4096
    let running = try Running(limits: limits)
    defer { running.server.stop() }
    let client = try running.client()
    for index in 0..<3 {
      try client.set(key: "k\(index)", value: [UInt8](repeating: 0, count: 1000))
    }
    let error = #expect(throws: StoreError.self) {
      try client.set(key: "k3", value: [UInt8](repeating: 0, count: 1200))
    }
    #expect(error?.code == .valueTooLarge)
    #expect(
      error?.description.contains("quota of 4096 bytes") == true, "\(String(describing: error))")
    #expect(try client.delete(key: "k0"))
    try client.set(key: "k3", value: [UInt8](repeating: 0, count: 1200))
  }

  @Test func clientSideLimits() throws {
    let running = try Running()
    defer { running.server.stop() }
    let client = try StoreClient(
      host: running.host, port: running.port, token: running.token,
      limits: StoreWireLimits(maxFrameSize: 1024, maxKeySize: 16, maxKeysPerWait: 2))
    let tooBig = #expect(throws: StoreError.self) {
      try client.set(key: "k", value: [UInt8](repeating: 0, count: 2000))
    }
    #expect(tooBig?.code == .valueTooLarge)
    let longKey = #expect(throws: StoreError.self) {
      try client.set(key: String(repeating: "k", count: 17), value: [])
    }
    #expect(longKey?.code == .invalidArgument)
    #expect(throws: StoreError.self) { try client.wait(keys: ["a", "b", "c"], timeout: .zero) }
    try client.set(key: "ok", value: [1])
  }

  @Test func wrongOrMissingTokenIsRefusedAndGoodClientsStillWork() throws {
    let running = try Running()
    defer { running.server.stop() }
    let good = try running.client()
    let wrong = #expect(throws: StoreError.self) { try running.client(token: .generate()) }
    #expect(wrong?.code == .authenticationFailed)
    #expect(wrong?.description.contains("KAITIAN_TOKEN") == true)
    let missing = #expect(throws: StoreError.self) {
      try StoreClient(host: running.host, port: running.port, token: nil)
    }
    #expect(missing?.code == .authenticationFailed)
    try good.set(key: "still", value: [1])
    #expect(try running.client().tryGet(key: "still") == [1])
  }

  @Test func garbageSlowAndOversizedClientsAreDropped() throws {
    let running = try Running()
    defer { running.server.stop() }
    let good = try running.client()

    let garbage = try TCPSocket.connect(
      host: running.host, port: running.port, deadline: .after(.seconds(5)))
    try garbage.writeAll([UInt8](repeating: 0x41, count: 100), deadline: .after(.seconds(1)))
    expectClosed(garbage, within: .seconds(2))

    // Slow loris: connects and never answers the challenge; dropped after the deadline.
    let slow = try TCPSocket.connect(
      host: running.host, port: running.port, deadline: .after(.seconds(5)))
    let start = Deadline.now
    expectClosed(slow, within: .seconds(3))
    #expect(Deadline.now.monotonicNanoseconds - start.monotonicNanoseconds >= 250_000_000)

    let oversized = try running.authenticatedSocket()
    try oversized.writeAll([0xFF, 0xFF, 0xFF, 0xFF], deadline: .after(.seconds(1)))
    expectClosed(oversized, within: .seconds(2))

    let badRequest = try running.authenticatedSocket()
    try badRequest.writeFrame([0xEE, 1, 2], deadline: .after(.seconds(1)))
    expectClosed(badRequest, within: .seconds(2))

    try good.set(key: "unaffected", value: [1])
    #expect(try good.tryGet(key: "unaffected") == [1])
  }

  @Test func portScanThenGoodClient() throws {
    let running = try Running()
    defer { running.server.stop() }
    for _ in 0..<200 {
      _ = try TCPSocket.connect(
        host: running.host, port: running.port, deadline: .after(.seconds(5)))
    }
    let client = try running.client()
    try client.set(key: "after-scan", value: [1])
    #expect(try client.tryGet(key: "after-scan") == [1])
  }

  @Test func connectionsBeyondTheCapAreRefused() throws {
    let running = try Running(
      limits: StoreServerLimits(maxConnections: 2, handshakeTimeout: .seconds(1)))
    defer { running.server.stop() }
    let first = try running.client()
    let second = try running.client()
    let start = Deadline.now
    let refused = #expect(throws: StoreError.self) {
      try StoreClient(
        host: running.host, port: running.port, token: running.token,
        connectTimeout: .milliseconds(300))
    }
    #expect(refused?.code == .refused)
    #expect(refused?.description.contains("maxConnections") == true)
    #expect(
      Deadline.now.monotonicNanoseconds - start.monotonicNanoseconds >= 50_000_000, "retried")
    try first.set(key: "a", value: [])
    try second.set(key: "b", value: [])
  }

  /// Idle connections that never authenticate cannot lock the job's clients out: they have a
  /// cap of their own, per source address too, and authenticated clients do not count in it.
  /// A refused client retries until its deadline, so it gets in once an idle one is dropped.
  @Test func unauthenticatedConnectionsHaveTheirOwnCap() throws {
    let running = try Running(
      limits: StoreServerLimits(
        maxConnections: 64, maxUnauthenticated: 4, maxUnauthenticatedPerAddress: 2,
        handshakeTimeout: .seconds(2)))
    defer { running.server.stop() }
    let early = try running.client()  // authenticated: not counted
    // A reply proves the server has finished early's handshake: the client's side of it ends
    // a moment before the server's, and until then early still counts as unauthenticated.
    try early.set(key: "early", value: [1])
    let idle = try (0..<2).map { _ in
      try TCPSocket.connect(host: running.host, port: running.port, deadline: .after(.seconds(5)))
    }
    // Time for the server to admit both, even on a loaded machine; the refused client below
    // gives up long before their 2 s deadline.
    sleep(for: .milliseconds(500))
    let refused = #expect(throws: StoreError.self) {
      try StoreClient(
        host: running.host, port: running.port, token: running.token,
        connectTimeout: .milliseconds(300))
    }
    #expect(
      refused?.description.contains("maxUnauthenticatedPerAddress") == true,
      "\(String(describing: refused))")
    // The idle ones are dropped at the 2 s handshake deadline; a patient client then gets in.
    let late = try running.client()
    try late.set(key: "late", value: [2])
    #expect(try early.tryGet(key: "late") == [2])
    _ = idle
  }

  @Test func stopReleasesBlockedWaitersAndClientsSeeConnectionLost() throws {
    let running = try Running()
    let waiter = try running.client()
    let idle = try running.client()
    let stopper = try OSThread.spawn(name: "stopper") {
      sleep(for: .milliseconds(100))
      running.server.stop()
    }
    let start = Deadline.now
    let error = #expect(throws: StoreError.self) {
      try waiter.get(key: "never", timeout: .seconds(10))
    }
    #expect(error?.code == .stopped || error?.code == .connectionLost)
    #expect(Deadline.now.monotonicNanoseconds - start.monotonicNanoseconds < 5_000_000_000)
    stopper.join()
    let lost = #expect(throws: StoreError.self) { try idle.set(key: "x", value: []) }
    #expect(lost?.code == .connectionLost)
    #expect(lost?.description.contains("127.0.0.1:\(running.port)") == true)
    let again = #expect(throws: StoreError.self) { try idle.tryGet(key: "x") }
    #expect(again?.code == .connectionLost)
  }

  @Test func connectingToNothingFailsAtTheDeadline() throws {
    let probe = try TCPSocket.listen(host: "127.0.0.1", port: 0)
    let port = probe.localPort
    _ = consume probe
    let error = #expect(throws: StoreError.self) {
      try StoreClient(
        host: "127.0.0.1", port: port, token: .generate(), connectTimeout: .milliseconds(200))
    }
    #expect(error?.code == .connectionFailed)
  }
}
