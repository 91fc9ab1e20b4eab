/// One RESP2 value as Redis sends it.
public enum RESPValue: Sendable, Equatable {
  /// `+OK`: a status line.
  case simple(String)
  /// `-ERR ...`: the server refused the command; the text starts with the error kind.
  case error(String)
  /// `:42`.
  case integer(Int64)
  /// `$3\r\nabc`, or `$-1` (nil) for an absent value.
  case bulk([UInt8]?)
  /// `*2\r\n...`, or `*-1` (nil).
  case array([RESPValue]?)
}

/// Caps on what the decoder accepts, checked before anything is allocated, so that a broken or
/// hostile server can make the client fail but never exhaust its memory or stack.
public struct RESPLimits: Sendable, Equatable {
  /// The longest bulk string; Kaitian's values are at most the store's frame size.
  public var maxBulkLength: Int
  /// The most elements of one array (SCAN replies are the largest Kaitian asks for).
  public var maxArrayLength: Int
  /// The deepest nesting of arrays (Kaitian's replies nest at most 2 deep).
  public var maxDepth: Int
  /// The longest status, error or length line.
  public var maxLineLength: Int

  public init(
    maxBulkLength: Int = 64 << 20, maxArrayLength: Int = 1 << 20, maxDepth: Int = 8,
    maxLineLength: Int = 64 << 10
  ) {
    self.maxBulkLength = maxBulkLength
    self.maxArrayLength = maxArrayLength
    self.maxDepth = maxDepth
    self.maxLineLength = maxLineLength
  }

  public static let `default` = RESPLimits()
}

/// Bytes that are not valid RESP2, or exceed `RESPLimits`; the connection cannot be trusted
/// afterwards.
public struct RESPProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
  public let description: String
  init(_ description: String) { self.description = description }
}
