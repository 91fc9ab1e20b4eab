import KaitianPOSIX

/// Why a connection handshake failed; each kind names the peer and says what to fix.
public struct HandshakeError: Error, CustomStringConvertible, Sendable {
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    private enum Base: Hashable, Sendable {
      case tokenMismatch, missingToken, serverNotAuthenticated, badMagic, versionMismatch
      case purposeMismatch, malformed, oversizedField, timedOut, connectionClosed, socket
      case refused
    }
    private let base: Base

    /// The two sides hold different job tokens.
    public static let tokenMismatch = Code(base: .tokenMismatch)
    /// The client has no job token configured.
    public static let missingToken = Code(base: .missingToken)
    /// The server's proof of the token was wrong: a different token, or an impostor.
    public static let serverNotAuthenticated = Code(base: .serverNotAuthenticated)
    /// The peer does not speak the Kaitian handshake at all.
    public static let badMagic = Code(base: .badMagic)
    /// The peer runs an incompatible Kaitian version.
    public static let versionMismatch = Code(base: .versionMismatch)
    /// The client connected to a port meant for something else (store versus mesh).
    public static let purposeMismatch = Code(base: .purposeMismatch)
    /// The peer sent a message that breaks the handshake format.
    public static let malformed = Code(base: .malformed)
    /// The peer announced a field larger than allowed.
    public static let oversizedField = Code(base: .oversizedField)
    /// The deadline passed before the handshake finished.
    public static let timedOut = Code(base: .timedOut)
    /// The peer closed the connection during the handshake.
    public static let connectionClosed = Code(base: .connectionClosed)
    /// The server turned the connection away before authenticating (for example, too many
    /// connections); the description carries its reason.
    public static let refused = Code(base: .refused)
    /// Another socket error; the description has the details.
    public static let socket = Code(base: .socket)

    public var description: String { "\(base)" }
  }

  /// Which end of the handshake detected the problem; it changes what the user should check.
  enum Side { case client, server }

  public let code: Code
  public let description: String
  /// False when the peer closed or stalled before sending a single byte.
  let peerSentData: Bool

  init(_ code: Code, _ description: String, peerSentData: Bool = true) {
    self.code = code
    self.description = description
    self.peerSentData = peerSentData
  }

  init(socketError: SocketError, peer: String, peerSentData: Bool) {
    switch socketError.code {
    case .timedOut:
      self.init(
        .timedOut,
        "handshake with \(peer) timed out; the peer is too slow, hung, or not a Kaitian process",
        peerSentData: peerSentData)
    case .peerClosed:
      self.init(
        .connectionClosed,
        "\(peer) closed the connection during the handshake; see its log for the reason",
        peerSentData: peerSentData)
    default:
      self.init(
        .socket, "handshake with \(peer) failed: \(socketError)", peerSentData: peerSentData)
    }
  }

  static func tokenMismatch(_ peer: String, side: Side) -> HandshakeError {
    switch side {
    case .server:
      HandshakeError(
        .tokenMismatch,
        "authentication failed from \(peer): the peer's job token differs; check "
          + "\(JobToken.environmentVariable) on that process")
    case .client:
      HandshakeError(
        .tokenMismatch,
        "authentication failed at \(peer): the server rejected our job token; make "
          + "\(JobToken.environmentVariable) the same on every process of the job")
    }
  }

  static func missingToken(_ peer: String, side: Side) -> HandshakeError {
    switch side {
    case .server:
      HandshakeError(
        .missingToken,
        "authentication failed from \(peer): the peer has no job token; set "
          + "\(JobToken.environmentVariable) on that process")
    case .client:
      HandshakeError(
        .missingToken,
        "\(peer) requires a job token and this process has none; set "
          + "\(JobToken.environmentVariable) or \(JobToken.fileEnvironmentVariable)")
    }
  }

  static func refused(_ peer: String, reason: String) -> HandshakeError {
    HandshakeError(.refused, "\(peer) refused the connection: \(reason)")
  }

  static func serverNotAuthenticated(_ peer: String) -> HandshakeError {
    HandshakeError(
      .serverNotAuthenticated,
      "\(peer) could not prove it knows the job token: it has a different "
        + "\(JobToken.environmentVariable), or it is not the server you meant to reach")
  }

  static func badMagic(_ peer: String, side: Side) -> HandshakeError {
    HandshakeError(
      .badMagic,
      side == .server
        ? "\(peer) sent bytes that are not a Kaitian handshake; something else is "
          + "connecting to this port"
        : "\(peer) is not a Kaitian endpoint; check the address and port")
  }

  static func versionMismatch(_ peer: String, peerVersion: UInt16?) -> HandshakeError {
    let theirs = peerVersion.map { "version \($0)" } ?? "another version"
    return HandshakeError(
      .versionMismatch,
      "\(peer) speaks Kaitian protocol \(theirs), this process speaks version "
        + "\(Handshake.protocolVersion); run the same Kaitian release on every host")
  }

  static func purposeMismatch(_ peer: String, ours: String, theirs: String?) -> HandshakeError {
    let detail = theirs.map { "'\($0)' connected to a '\(ours)' port" } ?? "wanted '\(ours)'"
    return HandshakeError(
      .purposeMismatch,
      "\(peer): connection purpose mismatch (\(detail)); check the port numbers")
  }

  static func malformed(_ peer: String, _ detail: String) -> HandshakeError {
    HandshakeError(
      .malformed,
      "malformed handshake with \(peer): \(detail); is it a Kaitian process of the same release?")
  }

  static func oversizedField(_ peer: String, _ field: String, size: Int, cap: Int)
    -> HandshakeError
  {
    HandshakeError(
      .oversizedField,
      "\(peer) announced a \(field) of \(size) bytes in the handshake, more than the \(cap) "
        + "allowed; dropped")
  }
}
