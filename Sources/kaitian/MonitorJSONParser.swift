/// Reads the JSON that workers and `kaitian run` write to the store (the tool has no
/// Foundation, so no JSONSerialization). Strict RFC 8259 with a depth limit, because the store's
/// values come from other processes and a bad one must give an error, not a crash.
struct MonitorJSONParser {
  struct Failure: Error, CustomStringConvertible {
    let description: String
  }

  private let bytes: [UInt8]
  private var position = 0
  private static let maxDepth = 64

  static func parse(_ bytes: [UInt8]) throws(Failure) -> JSON {
    var parser = MonitorJSONParser(bytes: bytes)
    parser.skipSpace()
    let value = try parser.value(depth: 0)
    parser.skipSpace()
    guard parser.position == bytes.count else { throw parser.failure("extra text after the value") }
    return value
  }

  static func parse(_ text: String) throws(Failure) -> JSON { try parse(Array(text.utf8)) }

  private init(bytes: [UInt8]) { self.bytes = bytes }

  private func failure(_ what: String) -> Failure {
    Failure(description: "invalid JSON at byte \(position): \(what)")
  }

  private mutating func skipSpace() {
    while position < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[position]) {
      position += 1
    }
  }

  private var next: UInt8? { position < bytes.count ? bytes[position] : nil }

  private mutating func value(depth: Int) throws(Failure) -> JSON {
    guard depth < Self.maxDepth else { throw failure("nested deeper than \(Self.maxDepth)") }
    guard let byte = next else { throw failure("unexpected end") }
    switch byte {
    case UInt8(ascii: "{"): return try object(depth: depth)
    case UInt8(ascii: "["): return try array(depth: depth)
    case UInt8(ascii: "\""): return .string(try string())
    case UInt8(ascii: "t"): return try literal("true", .bool(true))
    case UInt8(ascii: "f"): return try literal("false", .bool(false))
    case UInt8(ascii: "n"): return try literal("null", .null)
    default: return .number(try number())
    }
  }

  private mutating func literal(_ word: String, _ result: JSON) throws(Failure) -> JSON {
    let expected = Array(word.utf8)
    guard bytes.count - position >= expected.count,
      Array(bytes[position..<position + expected.count]) == expected
    else { throw failure("expected \(word)") }
    position += expected.count
    return result
  }

  private mutating func object(depth: Int) throws(Failure) -> JSON {
    position += 1
    var members: [(String, JSON)] = []
    skipSpace()
    if next == UInt8(ascii: "}") {
      position += 1
      return .object(members)
    }
    while true {
      skipSpace()
      guard next == UInt8(ascii: "\"") else { throw failure("expected a member name") }
      let name = try string()
      skipSpace()
      guard next == UInt8(ascii: ":") else { throw failure("expected ':'") }
      position += 1
      skipSpace()
      members.append((name, try value(depth: depth + 1)))
      skipSpace()
      switch next {
      case UInt8(ascii: ","): position += 1
      case UInt8(ascii: "}"):
        position += 1
        return .object(members)
      default: throw failure("expected ',' or '}'")
      }
    }
  }

  private mutating func array(depth: Int) throws(Failure) -> JSON {
    position += 1
    var values: [JSON] = []
    skipSpace()
    if next == UInt8(ascii: "]") {
      position += 1
      return .array(values)
    }
    while true {
      skipSpace()
      values.append(try value(depth: depth + 1))
      skipSpace()
      switch next {
      case UInt8(ascii: ","): position += 1
      case UInt8(ascii: "]"):
        position += 1
        return .array(values)
      default: throw failure("expected ',' or ']'")
      }
    }
  }

  private mutating func number() throws(Failure) -> Double {
    let start = position
    let allowed = Array("+-0123456789.eE".utf8)
    while let byte = next, allowed.contains(byte) { position += 1 }
    let text = String(decoding: bytes[start..<position], as: UTF8.self)
    guard !text.isEmpty, let value = Double(text), value.isFinite else {
      position = start
      throw failure("expected a value")
    }
    return value
  }

  private mutating func string() throws(Failure) -> String {
    position += 1
    var scalars = String.UnicodeScalarView()
    var run: [UInt8] = []
    func flush() {
      scalars.append(contentsOf: String(decoding: run, as: UTF8.self).unicodeScalars)
      run.removeAll(keepingCapacity: true)
    }
    while true {
      guard let byte = next else { throw failure("unterminated string") }
      position += 1
      switch byte {
      case UInt8(ascii: "\""):
        flush()
        return String(scalars)
      case UInt8(ascii: "\\"):
        flush()
        guard let escape = next else { throw failure("unterminated escape") }
        position += 1
        switch escape {
        case UInt8(ascii: "\""): scalars.append("\"")
        case UInt8(ascii: "\\"): scalars.append("\\")
        case UInt8(ascii: "/"): scalars.append("/")
        case UInt8(ascii: "b"): scalars.append("\u{08}")
        case UInt8(ascii: "f"): scalars.append("\u{0C}")
        case UInt8(ascii: "n"): scalars.append("\n")
        case UInt8(ascii: "r"): scalars.append("\r")
        case UInt8(ascii: "t"): scalars.append("\t")
        case UInt8(ascii: "u"): scalars.append(try unicodeEscape())
        default: throw failure("unknown escape")
        }
      case 0..<0x20: throw failure("control character in a string")
      default: run.append(byte)
      }
    }
  }

  /// The scalar of `\uXXXX`, joining a surrogate pair; a lone surrogate becomes U+FFFD.
  private mutating func unicodeEscape() throws(Failure) -> Unicode.Scalar {
    let high = try hex4()
    if (0xD800..<0xDC00).contains(high), next == UInt8(ascii: "\\"),
      position + 1 < bytes.count, bytes[position + 1] == UInt8(ascii: "u")
    {
      position += 2
      let low = try hex4()
      if (0xDC00..<0xE000).contains(low) {
        return Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)) ?? "\u{FFFD}"
      }
    }
    return Unicode.Scalar(high) ?? "\u{FFFD}"
  }

  private mutating func hex4() throws(Failure) -> UInt32 {
    guard bytes.count - position >= 4,
      let value = UInt32(String(decoding: bytes[position..<position + 4], as: UTF8.self), radix: 16)
    else { throw failure("bad \\u escape") }
    position += 4
    return value
  }
}
