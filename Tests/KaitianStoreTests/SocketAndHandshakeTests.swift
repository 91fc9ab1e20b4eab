import Glibc
import Testing

@testable import KaitianAuth
@testable import KaitianPOSIX

@Suite struct SocketTests {
  @Test(arguments: ["127.0.0.1", "::1"])
  func echoWithDeadlines(host: String) throws {
    let listener = try TCPSocket.listen(host: host, port: 0)
    #expect(listener.localPort != 0)
    let server = try OSThread.spawn(name: "echo") {
      guard let peer = try? listener.accept(deadline: .after(.seconds(5))),
        let bytes = try? peer.readExactly(100_000, deadline: .after(.seconds(5)))
      else { return }
      try? peer.writeAll(bytes, deadline: .after(.seconds(5)))
    }
    let client = try TCPSocket.connect(
      host: host, port: listener.localPort, deadline: .after(.seconds(5)))
    try client.setNoDelay()
    try client.setKeepAlive()
    let message = (0..<100_000).map { UInt8(truncatingIfNeeded: $0) }
    try client.writeAll(message, deadline: .after(.seconds(5)))
    #expect(try client.readExactly(100_000, deadline: .after(.seconds(5))) == message)
    server.join()
    let closed = #expect(throws: SocketError.self) {
      try client.readExactly(1, deadline: .after(.seconds(5)))
    }
    #expect(closed?.code == .peerClosed)
  }

  @Test func readTimesOutAndNonblockingCallsReturnZero() throws {
    let listener = try TCPSocket.listen(host: "127.0.0.1", port: 0)
    let client = try TCPSocket.connect(
      host: "127.0.0.1", port: listener.localPort, deadline: .after(.seconds(5)))
    let peer = try listener.accept(deadline: .after(.seconds(5)))
    let error = #expect(throws: SocketError.self) {
      try client.readExactly(1, deadline: .after(.milliseconds(50)))
    }
    #expect(error?.code == .timedOut)
    var buffer = [UInt8](repeating: 0, count: 8)
    let received = try buffer.withUnsafeMutableBytes { try client.receiveSome(into: $0) }
    #expect(received == 0)
    let sent = try [UInt8]([1, 2, 3]).withUnsafeBytes { try peer.sendSome($0) }
    #expect(sent == 3)
    #expect(try client.readExactly(3, deadline: .after(.seconds(1))) == [1, 2, 3])
    #expect(peer.description == client.localAddress.description)
  }

  @Test func connectRetriesUntilTheListenerAppears() throws {
    let probe = try TCPSocket.listen(host: "127.0.0.1", port: 0)
    let port = probe.localPort
    _ = consume probe
    let late = try OSThread.spawn(name: "late listener") {
      sleep(for: .milliseconds(200))
      guard let listener = try? TCPSocket.listen(host: "127.0.0.1", port: port) else { return }
      _ = try? listener.accept(deadline: .after(.seconds(5)))
    }
    let client = try TCPSocket.connect(host: "127.0.0.1", port: port, deadline: .after(.seconds(5)))
    #expect(client.peerAddress?.port == port)
    late.join()
  }

  @Test func connectGivesUpAtTheDeadline() throws {
    let probe = try TCPSocket.listen(host: "127.0.0.1", port: 0)
    let port = probe.localPort
    _ = consume probe
    let error = #expect(throws: SocketError.self) {
      try TCPSocket.connect(host: "127.0.0.1", port: port, deadline: .after(.milliseconds(200)))
    }
    #expect(error?.code == .timedOut)
    #expect(error?.description.contains("127.0.0.1:\(port)") == true)
  }

  @Test func shutdownWakesABlockedAccept() throws {
    let listener = try TCPSocket.listen(host: "::", port: 0)
    let stopper = try OSThread.spawn(name: "stopper") {
      sleep(for: .milliseconds(50))
      listener.shutdown()
    }
    #expect(throws: SocketError.self) { try listener.accept(deadline: .after(.seconds(5))) }
    stopper.join()
  }
}

@Suite struct HandshakeTests {
  /// Runs the server side of a handshake on a thread and the client side here.
  func handshake(
    serverToken: JobToken, clientToken: JobToken?, serverPurpose: String = "test",
    clientPurpose: String = "test", hello: [UInt8] = []
  ) throws -> (
    server: Result<Handshake.AcceptedClient, HandshakeError>, client: HandshakeError?,
    clientKeys: Handshake.SessionKeys?
  ) {
    let listener = try TCPSocket.listen(host: "127.0.0.1", port: 0)
    let result = ConditionLock<Result<Handshake.AcceptedClient, HandshakeError>?>(nil)
    let server = try OSThread.spawn(name: "hs server") {
      guard let peer = try? listener.accept(deadline: .after(.seconds(5))) else { return }
      let outcome = Result { () throws(HandshakeError) in
        try Handshake.performAsServer(
          on: peer, token: serverToken, purpose: serverPurpose, deadline: .after(.seconds(2)))
      }
      result.withLock { $0 = outcome }
    }
    let socket = try TCPSocket.connect(
      host: "127.0.0.1", port: listener.localPort, deadline: .after(.seconds(5)))
    var clientError: HandshakeError?
    var clientKeys: Handshake.SessionKeys?
    do throws(HandshakeError) {
      clientKeys = try Handshake.performAsClient(
        on: socket, token: clientToken, purpose: clientPurpose, hello: hello,
        deadline: .after(.seconds(2)))
    } catch {
      clientError = error
    }
    server.join()
    return (try #require(result.withLock { $0 }), clientError, clientKeys)
  }

  @Test func matchingTokensAuthenticateAndDeliverHello() throws {
    let token = JobToken.generate()
    let (server, client, _) = try handshake(
      serverToken: token, clientToken: token, hello: Array("rank 3".utf8))
    #expect(client == nil)
    #expect(try server.get().hello == Array("rank 3".utf8))
  }

  @Test func bothEndsDeriveTheConnectionsKeysOnePerDirection() throws {
    let token = JobToken.generate()
    let (server, _, client) = try handshake(serverToken: token, clientToken: token)
    let serverKeys = try server.get().keys
    let clientKeys = try #require(client)
    #expect(serverKeys.receiving == clientKeys.sending)
    #expect(serverKeys.sending == clientKeys.receiving)
    #expect(clientKeys.sending != clientKeys.receiving, "a frame could be reflected to its sender")
    #expect(clientKeys.sending.count == HMACSHA256.size)
    // Another connection of the same job has other keys: its frames cannot be replayed here.
    let (_, _, other) = try handshake(serverToken: token, clientToken: token)
    #expect(try #require(other).sending != clientKeys.sending)
  }

  @Test func wrongTokenIsRejectedOnBothSides() throws {
    let (server, client, _) = try handshake(
      serverToken: JobToken.generate(), clientToken: JobToken.generate())
    #expect(client?.code == .tokenMismatch)
    #expect(client?.description.contains("KAITIAN_TOKEN") == true)
    guard case .failure(let error) = server else {
      Issue.record("server accepted")
      return
    }
    #expect(error.code == .tokenMismatch)
    #expect(error.description.contains("127.0.0.1:"))
  }

  @Test func missingTokenHasItsOwnError() throws {
    let (server, client, _) = try handshake(serverToken: JobToken.generate(), clientToken: nil)
    #expect(client?.code == .missingToken)
    guard case .failure(let error) = server else {
      Issue.record("server accepted")
      return
    }
    #expect(error.code == .missingToken)
  }

  @Test func purposeMismatchIsRejected() throws {
    let token = JobToken.generate()
    let (server, client, _) = try handshake(
      serverToken: token, clientToken: token, serverPurpose: "store", clientPurpose: "mesh")
    #expect(client?.code == .purposeMismatch)
    guard case .failure(let error) = server else {
      Issue.record("server accepted")
      return
    }
    #expect(error.code == .purposeMismatch)
  }

  /// Connects raw, reads the challenge, sends `bytes`, and returns the server's error.
  func serverError(
    afterChallengeSending bytes: [UInt8], serverToken: JobToken = JobToken.generate()
  ) throws -> HandshakeError? {
    let listener = try TCPSocket.listen(host: "127.0.0.1", port: 0)
    let result = ConditionLock<HandshakeError?>(nil)
    let server = try OSThread.spawn(name: "hs server") {
      guard let peer = try? listener.accept(deadline: .after(.seconds(5))) else { return }
      do throws(HandshakeError) {
        _ = try Handshake.performAsServer(
          on: peer, token: serverToken, purpose: "test", deadline: .after(.seconds(1)))
      } catch {
        result.withLock { $0 = error }
      }
    }
    let socket = try TCPSocket.connect(
      host: "127.0.0.1", port: listener.localPort, deadline: .after(.seconds(5)))
    _ = try socket.readExactly(38, deadline: .after(.seconds(2)))
    try socket.writeAll(bytes, deadline: .after(.seconds(2)))
    server.join()
    return result.withLock { $0 }
  }

  @Test func garbageWrongVersionAndOversizedFieldsHaveDistinctErrors() throws {
    #expect(
      try serverError(afterChallengeSending: Array("GET / HTTP/1.1\r\n\r\n".utf8))?.code
        == .badMagic)
    var response = Handshake.magic
    response.appendBigEndian(UInt16(99))
    response += [UInt8](repeating: 0, count: 32) + [0, 4] + Array("test".utf8) + [0, 0, 0, 0]
    #expect(try serverError(afterChallengeSending: response)?.code == .versionMismatch)
    var oversized = Handshake.magic
    oversized.appendBigEndian(Handshake.protocolVersion)
    oversized += [UInt8](repeating: 0, count: 32) + [0, 4] + Array("test".utf8)
    oversized += [0xFF, 0xFF, 0xFF, 0xFF]
    #expect(try serverError(afterChallengeSending: oversized)?.code == .oversizedField)
    var badMAC = Handshake.magic
    badMAC.appendBigEndian(Handshake.protocolVersion)
    badMAC += [UInt8](repeating: 0, count: 32) + [7]
    #expect(try serverError(afterChallengeSending: badMAC)?.code == .malformed)
    #expect(try serverError(afterChallengeSending: [])?.code == .timedOut)
  }

  /// The token of the real job whose client and server the impostor tests stand between.
  static let realToken = try! JobToken("the-real-job-token-0123")

  /// A fake server that speaks the protocol without the token: it sends a challenge, records
  /// the client's response (80 bytes for purpose "test" and an empty hello), accepts, and
  /// answers with `serverMAC(response)`. Returns the client's error and the recorded response.
  func clientAgainstImpostor(
    serverMAC: @escaping @Sendable ([UInt8]) -> [UInt8]
  ) throws -> (HandshakeError?, [UInt8]) {
    let listener = try TCPSocket.listen(host: "127.0.0.1", port: 0)
    let recorded = ConditionLock<[UInt8]>([])
    let server = try OSThread.spawn(name: "impostor") {
      guard let peer = try? listener.accept(deadline: .after(.seconds(5))) else { return }
      var challenge = Handshake.magic
      challenge.appendBigEndian(Handshake.protocolVersion)
      challenge += [UInt8](repeating: 7, count: 32)
      try? peer.writeAll(challenge, deadline: .after(.seconds(2)))
      guard let response = try? peer.readExactly(80, deadline: .after(.seconds(2))) else { return }
      recorded.withLock { $0 = response }
      try? peer.writeAll([0] + serverMAC(response), deadline: .after(.seconds(2)))
    }
    let socket = try TCPSocket.connect(
      host: "127.0.0.1", port: listener.localPort, deadline: .after(.seconds(5)))
    var clientError: HandshakeError?
    do throws(HandshakeError) {
      try Handshake.performAsClient(
        on: socket, token: Self.realToken, purpose: "test", deadline: .after(.seconds(2)))
    } catch {
      clientError = error
    }
    server.join()
    return (clientError, recorded.withLock { $0 })
  }

  /// A server without the token cannot pass as one: its MAC is wrong.
  @Test func clientRejectsAnImpostorServer() throws {
    let (error, _) = try clientAgainstImpostor { _ in [UInt8](repeating: 0xAB, count: 32) }
    #expect(error?.code == .serverNotAuthenticated, "\(String(describing: error))")
  }

  /// Sending the client's own MAC back as the server's proof fails: the two MACs are over
  /// different labels ("client", "server") and nonce orders.
  @Test func clientRejectsItsOwnMACReflected() throws {
    let (error, response) = try clientAgainstImpostor { response in Array(response[39..<71]) }
    #expect(response.count == 80)
    #expect(error?.code == .serverNotAuthenticated, "\(String(describing: error))")
  }

  /// A genuine client's response, recorded by an impostor and replayed to the real server,
  /// fails: it answers another challenge's nonce.
  @Test func aReplayedResponseIsRejected() throws {
    let (_, response) = try clientAgainstImpostor { _ in [UInt8](repeating: 0, count: 32) }
    #expect(response.count == 80)
    let error = try serverError(
      afterChallengeSending: response, serverToken: Self.realToken)
    #expect(error?.code == .tokenMismatch)
  }

  @Test func clientRejectsANonKaitianServer() throws {
    let listener = try TCPSocket.listen(host: "127.0.0.1", port: 0)
    let server = try OSThread.spawn(name: "fake server") {
      guard let peer = try? listener.accept(deadline: .after(.seconds(5))) else { return }
      try? peer.writeAll(
        Array("SSH-2.0-OpenSSH_9.2 and some more text\r\n".utf8), deadline: .after(.seconds(1)))
      _ = try? peer.readExactly(1, deadline: .after(.milliseconds(500)))
    }
    let socket = try TCPSocket.connect(
      host: "127.0.0.1", port: listener.localPort, deadline: .after(.seconds(5)))
    let error = #expect(throws: HandshakeError.self) {
      try Handshake.performAsClient(
        on: socket, token: JobToken.generate(), purpose: "test", deadline: .after(.seconds(2)))
    }
    #expect(error?.code == .badMagic)
    server.join()
  }
}
