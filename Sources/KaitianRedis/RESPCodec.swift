import NIOCore

/// Decodes RESP2 replies. Total on any input: every length is checked against `RESPLimits`
/// before it is trusted, integers never overflow, and recursion is bounded by `maxDepth`.
///
/// A reply is consumed only once it is complete; a partial one is parsed again when more bytes
/// arrive, which is cheap for Kaitian's small replies and keeps the parser free of state.
public struct RESPDecoder: ByteToMessageDecoder {
  public typealias InboundOut = RESPValue

  public let limits: RESPLimits

  public init(limits: RESPLimits = .default) { self.limits = limits }

  public mutating func decode(
    context: ChannelHandlerContext, buffer: inout ByteBuffer
  ) throws -> DecodingState {
    guard let value = try Self.parse(&buffer, limits: limits) else { return .needMoreData }
    context.fireChannelRead(Self.wrapInboundOut(value))
    return .continue
  }

  public mutating func decodeLast(
    context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool
  ) throws -> DecodingState {
    while try decode(context: context, buffer: &buffer) == .continue {}
    return .needMoreData
  }

  /// Parses one complete value from the front of `buffer` and consumes it; returns nil (and
  /// consumes nothing) when the value is not complete yet.
  public static func parse(
    _ buffer: inout ByteBuffer, limits: RESPLimits
  ) throws(RESPProtocolError) -> RESPValue? {
    var cursor = buffer.readerIndex
    guard let value = try parseValue(buffer, &cursor, limits: limits, depth: 0) else {
      return nil
    }
    buffer.moveReaderIndex(to: cursor)
    return value
  }

  private static func parseValue(
    _ buffer: ByteBuffer, _ cursor: inout Int, limits: RESPLimits, depth: Int
  ) throws(RESPProtocolError) -> RESPValue? {
    guard let type = buffer.getInteger(at: cursor, as: UInt8.self) else { return nil }
    var position = cursor + 1
    guard let line = try readLine(buffer, &position, limits: limits) else { return nil }
    switch type {
    case UInt8(ascii: "+"):
      cursor = position
      return .simple(String(decoding: line, as: UTF8.self))
    case UInt8(ascii: "-"):
      cursor = position
      return .error(String(decoding: line, as: UTF8.self))
    case UInt8(ascii: ":"):
      cursor = position
      return .integer(try integer(line, what: "integer reply"))
    case UInt8(ascii: "$"):
      let length = try integer(line, what: "bulk string length")
      if length == -1 {
        cursor = position
        return .bulk(nil)
      }
      guard length >= 0, length <= limits.maxBulkLength else {
        throw RESPProtocolError(
          "bulk string length \(length) is outside 0...\(limits.maxBulkLength) "
            + "(RESPLimits.maxBulkLength)")
      }
      let size = Int(length)
      guard buffer.writerIndex - position >= size + 2 else { return nil }
      guard buffer.getInteger(at: position + size, as: UInt16.self) == 0x0D0A else {
        throw RESPProtocolError("bulk string of \(size) bytes is not followed by CRLF")
      }
      let bytes = buffer.getBytes(at: position, length: size) ?? []
      cursor = position + size + 2
      return .bulk(bytes)
    case UInt8(ascii: "*"):
      let count = try integer(line, what: "array length")
      if count == -1 {
        cursor = position
        return .array(nil)
      }
      guard count >= 0, count <= limits.maxArrayLength else {
        throw RESPProtocolError(
          "array length \(count) is outside 0...\(limits.maxArrayLength) "
            + "(RESPLimits.maxArrayLength)")
      }
      guard depth < limits.maxDepth else {
        throw RESPProtocolError(
          "arrays nest deeper than \(limits.maxDepth) levels (RESPLimits.maxDepth)")
      }
      // Every element needs at least 3 bytes ("+\r\n"): a count the buffer cannot hold yet is
      // not reserved up front.
      var elements: [RESPValue] = []
      elements.reserveCapacity(min(Int(count), (buffer.writerIndex - position) / 3))
      for _ in 0..<count {
        guard
          let element = try parseValue(buffer, &position, limits: limits, depth: depth + 1)
        else { return nil }
        elements.append(element)
      }
      cursor = position
      return .array(elements)
    default:
      throw RESPProtocolError("unknown reply type byte 0x\(String(type, radix: 16))")
    }
  }

  /// The bytes up to the next CRLF, moving `position` past it; nil while no CRLF has arrived.
  private static func readLine(
    _ buffer: ByteBuffer, _ position: inout Int, limits: RESPLimits
  ) throws(RESPProtocolError) -> ArraySlice<UInt8>? {
    let available = buffer.writerIndex - position
    let searched = min(available, limits.maxLineLength + 2)
    guard let view = buffer.viewBytes(at: position, length: searched) else { return nil }
    guard let newline = view.firstIndex(of: UInt8(ascii: "\n")) else {
      if available > limits.maxLineLength + 1 {
        throw RESPProtocolError(
          "a reply line is longer than \(limits.maxLineLength) bytes (RESPLimits.maxLineLength)"
        )
      }
      return nil
    }
    let bytes = Array(view[view.startIndex..<newline])
    guard bytes.last == UInt8(ascii: "\r") else {
      throw RESPProtocolError("a reply line ends in a bare LF instead of CRLF")
    }
    position += bytes.count + 1
    return bytes.dropLast()
  }

  private static func integer(
    _ line: ArraySlice<UInt8>, what: String
  ) throws(RESPProtocolError) -> Int64 {
    var digits = line[...]
    let negative = digits.first == UInt8(ascii: "-")
    if negative { digits = digits.dropFirst() }
    guard !digits.isEmpty, digits.count <= 19 else {
      throw RESPProtocolError("\(what) '\(printable(line))' is not a 64-bit integer")
    }
    var value: Int64 = 0
    for digit in digits {
      guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else {
        throw RESPProtocolError("\(what) '\(printable(line))' is not a decimal integer")
      }
      let (times, overflow1) = value.multipliedReportingOverflow(by: 10)
      let (sum, overflow2) = times.addingReportingOverflow(Int64(digit - UInt8(ascii: "0")))
      guard !overflow1, !overflow2 else {
        throw RESPProtocolError("\(what) '\(printable(line))' overflows 64 bits")
      }
      value = sum
    }
    return negative ? -value : value
  }

  /// At most 40 bytes of `line` with non-printable bytes escaped, for messages.
  private static func printable(_ line: ArraySlice<UInt8>) -> String {
    line.prefix(40).map { byte in
      (0x20..<0x7F).contains(byte)
        ? String(UnicodeScalar(byte)) : "\\x" + String(byte, radix: 16)
    }.joined()
  }
}

/// A command as Redis expects it from clients: an array of bulk strings.
public struct RESPCommand: Sendable, Equatable {
  public var arguments: [[UInt8]]

  public init(_ arguments: [[UInt8]]) { self.arguments = arguments }

  public init(_ words: String...) { self.arguments = words.map { Array($0.utf8) } }

  /// The command's name, for error messages (never its arguments: they may hold a password).
  public var name: String {
    arguments.first.map { String(decoding: $0, as: UTF8.self) } ?? "(empty)"
  }
}

/// Encodes `RESPCommand`s.
public struct RESPEncoder: MessageToByteEncoder {
  public typealias OutboundIn = RESPCommand

  public init() {}

  public func encode(data: RESPCommand, out: inout ByteBuffer) {
    out.writeString("*\(data.arguments.count)\r\n")
    for argument in data.arguments {
      out.writeString("$\(argument.count)\r\n")
      out.writeBytes(argument)
      out.writeString("\r\n")
    }
  }
}
