/// An error from a communicator: which rank saw it, during which call, and why.
///
/// A struct around a private enum (not a public enum) so new causes can be added without
/// breaking callers; `code` is the stable classification that also crosses the C ABI.
public struct KaitianError: Error, Sendable, CustomStringConvertible, Equatable {
  /// Stable classes of failure. Raw values are `ktResult_t` in include/kaitian.h.
  public enum Code: Int32, Sendable {
    case invalidArgument = 1
    case invalidUsage = 2
    case systemError = 3
    case remoteError = 4
    case timeout = 5
    case mismatch = 6
    case internalError = 8
  }

  public let code: Code
  /// The rank that reports the error, when known.
  public let rank: Int?
  /// The call that failed, such as "allreduce #12"; nil outside a call (set-up, teardown).
  public let call: String?
  /// What went wrong and, where possible, what to do about it.
  public let cause: String

  /// For an error a peer reported: its full original description, which is what this rank
  /// passes on, so a failure relayed through several ranks is not wrapped once per hop.
  let relayed: String?

  public init(_ code: Code, rank: Int? = nil, call: String? = nil, _ cause: String) {
    self.init(code, rank: rank, call: call, cause, relayed: nil)
  }

  init(_ code: Code, rank: Int?, call: String?, _ cause: String, relayed: String?) {
    self.code = code
    self.rank = rank
    self.call = call
    self.cause = cause
    self.relayed = relayed
  }

  /// A failure that a peer reported; `report` is that peer's own description of it.
  static func reported(code: Code, report: String) -> KaitianError {
    KaitianError(
      code, rank: nil, call: nil, "aborted because of a failure elsewhere: \(report)",
      relayed: report)
  }

  /// What to tell peers about this failure.
  var report: String { relayed ?? description }

  public var description: String {
    var parts: [String] = []
    if let rank { parts.append("rank \(rank)") }
    if let call { parts.append(call) }
    parts.append(cause)
    return parts.joined(separator: ": ")
  }

  /// The same failure attributed to a rank and call, keeping what was already known.
  func attributed(rank: Int, call: String?) -> KaitianError {
    KaitianError(
      code, rank: self.rank ?? rank, call: self.call ?? call, cause, relayed: relayed)
  }

  static func invalidArgument(_ cause: String) -> KaitianError {
    KaitianError(.invalidArgument, cause)
  }
  static func system(_ cause: String) -> KaitianError { KaitianError(.systemError, cause) }
  static func remote(_ cause: String) -> KaitianError { KaitianError(.remoteError, cause) }
}
