/// An error from a key-value store operation, with a message that says what to do about it.
///
/// Match on `code` (`error.code == .timeout`); new codes can be added without breaking callers.
public struct StoreError: Error, CustomStringConvertible, Sendable, Equatable {
  public struct Code: Hashable, Sendable, CustomStringConvertible {
    fileprivate enum Base: UInt8, Hashable, Sendable {
      case timeout = 1
      case connectionFailed
      case connectionLost
      case authenticationFailed
      case refused
      case protocolViolation
      case valueTooLarge
      case invalidArgument
      case stopped
    }
    fileprivate let base: Base

    /// Keys did not appear before the timeout.
    public static let timeout = Code(base: .timeout)
    /// The client could not reach the server.
    public static let connectionFailed = Code(base: .connectionFailed)
    /// An established connection to the server broke.
    public static let connectionLost = Code(base: .connectionLost)
    /// The job tokens of client and server do not match, or one is missing; or a value read
    /// back through `AuthenticatedRendezvous` failed its job-token MAC.
    public static let authenticationFailed = Code(base: .authenticationFailed)
    /// The server turned the connection away (for example, too many connections).
    public static let refused = Code(base: .refused)
    /// A peer sent bytes that are not a valid store message.
    public static let protocolViolation = Code(base: .protocolViolation)
    /// A value or message exceeds the configured frame size.
    public static let valueTooLarge = Code(base: .valueTooLarge)
    /// A bad argument: a key too long, too many keys, a non-numeric counter.
    public static let invalidArgument = Code(base: .invalidArgument)
    /// The store is shutting down.
    public static let stopped = Code(base: .stopped)

    public var description: String { "\(base)" }
  }

  public let code: Code
  public let description: String

  init(_ code: Code, _ description: String) {
    self.code = code
    self.description = description
  }

  // MARK: Wire form

  /// The code as it travels in an error response.
  var wireCode: UInt8 { code.base.rawValue }

  /// Rebuilds an error sent by the server; an unknown code (from a newer server) becomes a
  /// protocol violation that still carries the server's message.
  init(wireCode: UInt8, message: String) {
    if let base = Code.Base(rawValue: wireCode) {
      self.init(Code(base: base), message)
    } else {
      self.init(.protocolViolation, "store server error with unknown code \(wireCode): \(message)")
    }
  }

  // MARK: Constructors with the messages users see

  /// An error of a store implemented outside this package (the C ABI's callback store),
  /// classified by its implementer; `description` reaches users as is.
  public static func foreign(_ code: Code, _ description: String) -> StoreError {
    StoreError(code, description)
  }

  /// `location` says where the keys were awaited ("in Redis at ..."), for stores other than
  /// this package's own.
  package static func timeout(
    missing keys: [String], waited: Duration, location: String? = nil
  ) -> StoreError {
    let shown = keys.prefix(8).map { "'\($0)'" }.joined(separator: ", ")
    let more = keys.count > 8 ? " and \(keys.count - 8) more" : ""
    let place = location.map { " \($0)" } ?? ""
    return StoreError(
      .timeout,
      "timed out after \(waited.secondsDescription) waiting for store key(s) \(shown)\(more)"
        + "\(place); "
        + "the process that sets them may have failed or not started yet: check its log, "
        + "or raise the timeout")
  }

  static func connectionFailed(_ server: String, _ reason: String) -> StoreError {
    StoreError(
      .connectionFailed,
      "cannot connect to the store server at \(server): \(reason); check that the server is "
        + "running and that the address and port are right")
  }

  static func connectionLost(_ server: String, _ reason: String) -> StoreError {
    StoreError(
      .connectionLost,
      "lost the connection to the store server at \(server) (\(reason)); the server process "
        + "may have exited: check its log")
  }

  static func authenticationFailed(_ reason: String) -> StoreError {
    StoreError(.authenticationFailed, reason)
  }

  static func refused(_ reason: String) -> StoreError {
    StoreError(.refused, reason)
  }

  static func protocolViolation(_ detail: String) -> StoreError {
    StoreError(.protocolViolation, "store protocol violation: \(detail)")
  }

  static func valueTooLarge(_ what: String, size: Int, limit: Int) -> StoreError {
    StoreError(
      .valueTooLarge,
      "\(what) needs a \(size)-byte message, over the store's \(limit)-byte frame limit; store "
        + "large data elsewhere (split it, or send it over the data path) or raise "
        + "StoreWireLimits.maxFrameSize on server and clients")
  }

  static func quotaExceeded(key: String, stored: Int, after: Int, quota: Int) -> StoreError {
    StoreError(
      .valueTooLarge,
      "storing key '\(key)' would make the store hold \(after) bytes of keys and values (it "
        + "holds \(stored)), over its quota of \(quota) bytes; a job's rendezvous needs far "
        + "less, so a client is writing more than rendezvous data (raise "
        + "StoreServerLimits.maxStoredBytes if that is intended)")
  }

  static func invalidArgument(_ detail: String) -> StoreError {
    StoreError(.invalidArgument, detail)
  }

  static let stopped = StoreError(
    .stopped,
    "the store is shutting down; the job is ending or its launcher stopped it")
}
