import Glibc

/// An error from a socket operation: a failed system call, a deadline, a closed peer, or an
/// address that cannot be used.
///
/// Matched through `code` so that new kinds can be added without breaking callers; the text in
/// `description` names the operation and the peer so it can be shown to a user as is.
public struct SocketError: Error, CustomStringConvertible, Sendable {
  /// What kind of failure this is; compare with the static members (`error.code == .timedOut`).
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    private enum Base: Hashable, Sendable {
      case systemCall, timedOut, peerClosed, addressResolution, invalidAddress, noSuchInterface
    }
    private let base: Base

    /// A system call failed; `SocketError.errno` says why.
    public static let systemCall = Code(base: .systemCall)
    /// The deadline passed before the operation finished.
    public static let timedOut = Code(base: .timedOut)
    /// The peer closed the connection (end of stream) or reset it.
    public static let peerClosed = Code(base: .peerClosed)
    /// `getaddrinfo` could not resolve a host name.
    public static let addressResolution = Code(base: .addressResolution)
    /// A "host:port" string or address could not be understood.
    public static let invalidAddress = Code(base: .invalidAddress)
    /// The requested network interface does not exist or has no usable address.
    public static let noSuchInterface = Code(base: .noSuchInterface)

    public var description: String { "\(base)" }
  }

  public let code: Code
  /// The `errno` of a failed system call, or `nil` for other kinds.
  public let errno: Int32?
  public let description: String

  init(_ code: Code, errno: Int32? = nil, _ description: String) {
    self.code = code
    self.errno = errno
    self.description = description
  }

  static func systemCall(_ operation: String, errno: Int32) -> SocketError {
    if errno == ECONNRESET || errno == EPIPE {
      return peerClosed(operation, errno: errno)
    }
    return SocketError(
      .systemCall, errno: errno, "\(operation) failed: \(errnoText(errno))")
  }

  static func timedOut(_ operation: String, after duration: Duration? = nil) -> SocketError {
    let waited = duration.map { " after \($0.secondsDescription)" } ?? ""
    return SocketError(.timedOut, "\(operation) timed out\(waited)")
  }

  static func peerClosed(_ operation: String, errno: Int32? = nil) -> SocketError {
    let reason = errno.map { " (\(errnoText($0)))" } ?? ""
    return SocketError(
      .peerClosed, errno: errno, "\(operation): the peer closed the connection\(reason)")
  }
}
