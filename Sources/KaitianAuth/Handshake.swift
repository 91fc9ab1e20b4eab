import KaitianPOSIX

/// Mutual challenge-response authentication at the start of every Kaitian TCP connection.
///
/// Both sides prove they know the job token without sending it, and the client delivers a
/// small "hello" (for example "rank 3 of job X, data connection") that the MAC authenticates,
/// so the server can trust it. The exchange, with all integers big-endian:
///
///     server -> client  challenge: magic "KTAU", version (2), server nonce (32)
///     client -> server  response:  magic "KTAU", version (2), client nonce (32),
///                                  MAC length (1: 0 = no token, or 32), MAC,
///                                  purpose length (1), purpose, hello length (4), hello
///     server -> client  verdict:   status (1); if accepted, server MAC (32)
///
///     or, instead of the challenge, a refusal: magic "KTNO", reason length (2), reason
///
///     client MAC = HMAC(token, server nonce || "client" || client nonce || purpose length ||
///                       purpose || hello length || hello)
///     server MAC = HMAC(token, client nonce || "server" || server nonce || purpose)
///
/// Both sides then hold two keys that only the two ends of this connection can know, one per
/// direction (`SessionKeys`), for MACs on the frames that follow:
///
///     client -> server key = HMAC(token, "kaitian session client to server" || server nonce ||
///                                 client nonce || purpose)
///     server -> client key = the same with "server to client"
///
/// A frame MAC'd under them cannot be replayed from another connection (other nonces) or
/// reflected back to its sender (the other direction's key).
///
/// Fresh nonces on both sides defeat replay; the purpose string (such as "store" or "mesh")
/// is inside the MAC so that a response recorded for one kind of port cannot be replayed to
/// another. The server reads every length before the bytes it announces and rejects it if it
/// is over its cap, and the whole exchange runs under one deadline, so a silent or slow
/// client (a port scan, a slow-loris attack) costs the server at most that deadline.
public enum Handshake {
  /// Bumped when the handshake or anything after it changes incompatibly.
  public static let protocolVersion: UInt16 = 1
  /// The largest hello a client may send.
  public static let maxHelloSize = 4096
  /// The longest purpose string, in UTF-8 bytes.
  public static let maxPurposeSize = 255

  static let magic: [UInt8] = Array("KTAU".utf8)
  /// Sent instead of a challenge by a server that turns the connection away.
  static let refusalMagic: [UInt8] = Array("KTNO".utf8)
  static let maxRefusalReasonSize = 1024
  static let nonceSize = 32

  /// The verdict byte the server sends after reading the client's response.
  enum Verdict: UInt8 {
    case accepted = 0
    case tokenMismatch = 1
    case missingToken = 2
    case versionMismatch = 3
    case purposeMismatch = 4
    case malformed = 5
  }

  /// The keys of one authenticated connection, as seen from one end.
  public struct SessionKeys: Sendable {
    /// MACs what this end sends; the peer checks them with its `receiving` key.
    public let sending: [UInt8]
    /// Checks what the peer sends.
    public let receiving: [UInt8]

    static func derive(
      token: JobToken, serverNonce: [UInt8], clientNonce: [UInt8], purpose: [UInt8],
      isServer: Bool
    ) -> SessionKeys {
      func key(_ direction: String) -> [UInt8] {
        HMACSHA256.authenticate(
          Array("kaitian session \(direction)".utf8) + serverNonce + clientNonce + purpose,
          key: token.secret)
      }
      let toServer = key("client to server")
      let toClient = key("server to client")
      return isServer
        ? SessionKeys(sending: toClient, receiving: toServer)
        : SessionKeys(sending: toServer, receiving: toClient)
    }
  }

  /// A client the server has authenticated: its hello, and the connection's keys.
  public struct AcceptedClient: Sendable {
    public let hello: [UInt8]
    public let keys: SessionKeys
  }

  // MARK: Server side

  /// Authenticates the client on an accepted connection; returns its hello and the keys.
  ///
  /// On failure the reason is logged with the peer address (at info level for a peer that
  /// closed without sending anything, as port scanners and health checks do; otherwise as a
  /// warning) and the caller should drop the connection.
  ///
  /// - Parameters:
  ///   - purpose: what this port is for; the client must name the same purpose.
  ///   - deadline: when to give up on a client that is too slow; keep it short (seconds).
  public static func performAsServer(
    on socket: TCPSocket, token: JobToken, purpose: String, deadline: Deadline
  ) throws(HandshakeError) -> AcceptedClient {
    let peer = socket.description
    do {
      return try serve(socket, token: token, purpose: purpose, deadline: deadline)
    } catch {
      if error.code == .connectionClosed && !error.peerSentData {
        Log.info("auth", "connection from \(peer) closed before the handshake (port scan?)")
      } else {
        Log.warn("auth", "rejected connection from \(peer): \(error)")
      }
      throw error
    }
  }

  private static func serve(
    _ socket: TCPSocket, token: JobToken, purpose: String, deadline: Deadline
  ) throws(HandshakeError) -> AcceptedClient {
    let peer = socket.description
    let serverNonce = randomNonce()
    var challenge = magic
    challenge.appendBigEndian(protocolVersion)
    challenge += serverNonce
    try io(peer, sentData: false) { () throws(SocketError) in
      try socket.writeAll(challenge, deadline: deadline)
    }

    let clientMagic = try io(peer, sentData: false) { () throws(SocketError) in
      try socket.readExactly(magic.count, deadline: deadline)
    }
    func read(_ count: Int) throws(HandshakeError) -> [UInt8] {
      try io(peer, sentData: true) { () throws(SocketError) in
        try socket.readExactly(count, deadline: deadline)
      }
    }
    func reject(_ verdict: Verdict, _ error: HandshakeError) -> HandshakeError {
      // Best effort: the client learns why, but a vanished client must not mask the reason.
      try? socket.writeAll([verdict.rawValue], deadline: deadline)
      return error
    }
    guard clientMagic == magic else { throw .badMagic(peer, side: .server) }
    let header = try read(2 + nonceSize + 1)
    let version = UInt16(header[0]) << 8 | UInt16(header[1])
    let clientNonce = Array(header[2..<2 + nonceSize])
    let macLength = Int(header[2 + nonceSize])
    guard macLength == 0 || macLength == HMACSHA256.size else {
      throw reject(.malformed, .malformed(peer, "MAC length \(macLength)"))
    }
    let clientMAC = try read(macLength)
    let purposeLength = Int(try read(1)[0])
    let clientPurpose = try read(purposeLength)
    let helloLengthBytes = try read(4)
    let helloLength = helloLengthBytes.reduce(0) { $0 << 8 | Int($1) }
    guard helloLength <= maxHelloSize else {
      throw reject(.malformed, .oversizedField(peer, "hello", size: helloLength, cap: maxHelloSize))
    }
    let hello = try read(helloLength)

    guard version == protocolVersion else {
      throw reject(.versionMismatch, .versionMismatch(peer, peerVersion: version))
    }
    let expectedPurpose = Array(purpose.utf8)
    guard clientPurpose == expectedPurpose else {
      let theirs = String(decoding: clientPurpose, as: UTF8.self)
      throw reject(.purposeMismatch, .purposeMismatch(peer, ours: purpose, theirs: theirs))
    }
    guard macLength != 0 else { throw reject(.missingToken, .missingToken(peer, side: .server)) }
    var signed = serverNonce + Array("client".utf8) + clientNonce
    signed.append(UInt8(purposeLength))
    signed += clientPurpose + helloLengthBytes + hello
    guard constantTimeEqual(clientMAC, HMACSHA256.authenticate(signed, key: token.secret)) else {
      throw reject(.tokenMismatch, .tokenMismatch(peer, side: .server))
    }

    var verdict = [Verdict.accepted.rawValue]
    verdict += HMACSHA256.authenticate(
      clientNonce + Array("server".utf8) + serverNonce + expectedPurpose, key: token.secret)
    try io(peer, sentData: true) { () throws(SocketError) in
      try socket.writeAll(verdict, deadline: deadline)
    }
    let keys = SessionKeys.derive(
      token: token, serverNonce: serverNonce, clientNonce: clientNonce, purpose: expectedPurpose,
      isServer: true)
    return AcceptedClient(hello: hello, keys: keys)
  }

  /// Turns a new connection away instead of challenging it, telling the client why (for
  /// example "too many connections"), so it fails with `.refused` and that reason rather than
  /// a bare "connection closed". The caller then drops the socket.
  public static func refuse(on socket: TCPSocket, reason: String, deadline: Deadline) {
    let text = Array(reason.utf8.prefix(maxRefusalReasonSize))
    var message = refusalMagic
    message.appendBigEndian(UInt16(text.count))
    message += text
    // Best effort: a peer that is already gone needs no explanation.
    try? socket.writeAll(message, deadline: deadline)
  }

  // MARK: Client side

  /// Authenticates to the server on a connected socket, delivering `hello`, and checks that
  /// the server knows the token too. Returns the connection's keys.
  ///
  /// - Parameters:
  ///   - token: the job token, or `nil` when none is configured; the server then refuses with
  ///     an error that says to set one (rather than a confusing token mismatch).
  ///   - purpose: what the connection is for; must equal the server's (at most 255 bytes).
  ///   - hello: at most `maxHelloSize` bytes for the server, authenticated by the MAC.
  @discardableResult
  public static func performAsClient(
    on socket: TCPSocket, token: JobToken?, purpose: String, hello: [UInt8] = [],
    deadline: Deadline
  ) throws(HandshakeError) -> SessionKeys {
    let purposeBytes = Array(purpose.utf8)
    precondition(purposeBytes.count <= maxPurposeSize, "handshake purpose is too long")
    precondition(hello.count <= maxHelloSize, "handshake hello is larger than maxHelloSize")
    let peer = socket.description

    func read(_ count: Int) throws(HandshakeError) -> [UInt8] {
      try io(peer, sentData: true) { () throws(SocketError) in
        try socket.readExactly(count, deadline: deadline)
      }
    }
    let serverMagic = try read(magic.count)
    if serverMagic == refusalMagic {
      let length = try read(2).reduce(0) { $0 << 8 | Int($1) }
      throw .refused(peer, reason: String(decoding: try read(length), as: UTF8.self))
    }
    guard serverMagic == magic else { throw .badMagic(peer, side: .client) }
    let challenge = try read(2 + nonceSize)
    let serverVersion = UInt16(challenge[0]) << 8 | UInt16(challenge[1])
    let serverNonce = Array(challenge[2...])
    let clientNonce = randomNonce()

    var helloLength: [UInt8] = []
    helloLength.appendBigEndian(UInt32(hello.count))
    var response = magic
    response.appendBigEndian(protocolVersion)
    response += clientNonce
    if let token {
      var signed = serverNonce + Array("client".utf8) + clientNonce
      signed.append(UInt8(purposeBytes.count))
      signed += purposeBytes + helloLength + hello
      response.append(UInt8(HMACSHA256.size))
      response += HMACSHA256.authenticate(signed, key: token.secret)
    } else {
      response.append(0)
    }
    response.append(UInt8(purposeBytes.count))
    response += purposeBytes + helloLength + hello
    // The response is sent even on a version mismatch so the server can log it too.
    try io(peer, sentData: true) { () throws(SocketError) in
      try socket.writeAll(response, deadline: deadline)
    }
    guard serverVersion == protocolVersion else {
      throw .versionMismatch(peer, peerVersion: serverVersion)
    }

    let status = try read(1)[0]
    switch Verdict(rawValue: status) {
    case .accepted: break
    case .tokenMismatch: throw .tokenMismatch(peer, side: .client)
    case .missingToken: throw .missingToken(peer, side: .client)
    case .versionMismatch: throw .versionMismatch(peer, peerVersion: nil)
    case .purposeMismatch: throw .purposeMismatch(peer, ours: purpose, theirs: nil)
    case .malformed, nil: throw .malformed(peer, "the server rejected our handshake (\(status))")
    }
    let serverMAC = try read(HMACSHA256.size)
    guard let token else { throw .missingToken(peer, side: .client) }
    let expected = HMACSHA256.authenticate(
      clientNonce + Array("server".utf8) + serverNonce + purposeBytes, key: token.secret)
    guard constantTimeEqual(serverMAC, expected) else {
      throw .serverNotAuthenticated(peer)
    }
    return SessionKeys.derive(
      token: token, serverNonce: serverNonce, clientNonce: clientNonce, purpose: purposeBytes,
      isServer: false)
  }

  // MARK: Helpers

  private static func randomNonce() -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<nonceSize).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
  }

  /// Runs socket I/O and translates its errors, remembering whether the peer had already
  /// sent something (to tell a port scan from a broken client).
  private static func io<Result>(
    _ peer: String, sentData: Bool, _ body: () throws(SocketError) -> Result
  ) throws(HandshakeError) -> Result {
    do {
      return try body()
    } catch {
      throw HandshakeError(socketError: error, peer: peer, peerSentData: sentData)
    }
  }
}

extension Array where Element == UInt8 {
  /// Appends `value` in network byte order.
  package mutating func appendBigEndian<Value: FixedWidthInteger>(_ value: Value) {
    for shift in stride(from: Value.bitWidth - 8, through: 0, by: -8) {
      append(UInt8(truncatingIfNeeded: value >> shift))
    }
  }
}
