import Foundation

/// Any JSON value, read and written by Foundation's JSONDecoder and JSONEncoder.
///
/// Typed documents decode straight into Decodable structs (`decoded(as:)`); this type is for what
/// the tool passes through without knowing its shape (the store's `monitor/` values in a
/// snapshot) and for the `--json` documents it assembles. Output has its object keys sorted, so
/// the same document always renders the same text.
package enum JSON: Equatable, Sendable {
  case null
  case bool(Bool)
  case number(Double)
  case string(String)
  case array([JSON])
  case object([(String, JSON)])

  package static func == (lhs: JSON, rhs: JSON) -> Bool {
    switch (lhs, rhs) {
    case (.null, .null): true
    case (.bool(let a), .bool(let b)): a == b
    case (.number(let a), .number(let b)): a == b
    case (.string(let a), .string(let b)): a == b
    case (.array(let a), .array(let b)): a == b
    case (.object(let a), .object(let b)): a.map(\.0) == b.map(\.0) && a.map(\.1) == b.map(\.1)
    default: false
    }
  }

  /// A value that is not valid JSON (or nests deeper than JSONDecoder allows).
  package struct Malformed: Error, CustomStringConvertible {
    package let description: String
  }

  /// The value of one JSON text.
  package static func parse(_ bytes: [UInt8]) throws(Malformed) -> JSON {
    do {
      return try JSONDecoder().decode(JSON.self, from: Data(bytes))
    } catch {
      throw Malformed(description: "invalid JSON: \(Self.reason(error))")
    }
  }

  package static func parse(_ text: String) throws(Malformed) -> JSON {
    try parse(Array(text.utf8))
  }

  /// The value as a `T`. Why through the encoder: the value is already parsed, and JSONDecoder
  /// reads only bytes.
  package func decoded<T: Decodable>(as type: T.Type) throws(Malformed) -> T {
    do {
      return try JSONDecoder().decode(T.self, from: try JSONEncoder().encode(self))
    } catch {
      throw Malformed(description: Self.reason(error))
    }
  }

  /// Compact text with sorted keys; a non-finite number is written as null, as JSON has none.
  package var rendered: String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    // Every case encodes (non-finite numbers become null), so encoding cannot fail.
    return String(decoding: (try? encoder.encode(self)) ?? Data("null".utf8), as: UTF8.self)
  }

  /// What a decoding error means, in one line: the field's path and what was wrong.
  private static func reason(_ error: any Error) -> String {
    guard let error = error as? DecodingError else { return "\(error)" }
    func path(_ context: DecodingError.Context, _ key: (any CodingKey)? = nil) -> String {
      ((context.codingPath + (key.map { [$0] } ?? [])).map {
        $0.intValue.map(String.init) ?? $0.stringValue
      })
      .joined(separator: ".")
    }
    switch error {
    case .keyNotFound(let key, let context): return "missing field '\(path(context, key))'"
    case .typeMismatch(let type, let context), .valueNotFound(let type, let context):
      return context.codingPath.isEmpty ? "expected \(type)" : "mistyped field '\(path(context))'"
    case .dataCorrupted(let context):
      let underlying = context.underlyingError.map { ": \($0)" } ?? ""
      return context.codingPath.isEmpty
        ? context.debugDescription + underlying
        : "bad field '\(path(context))': \(context.debugDescription)"
    @unknown default: return "\(error)"
    }
  }
}

extension JSON: Codable {
  private struct Key: CodingKey {
    let stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
  }

  package init(from decoder: any Decoder) throws {
    if var items = try? decoder.unkeyedContainer() {
      var values: [JSON] = []
      while !items.isAtEnd { values.append(try items.decode(JSON.self)) }
      self = .array(values)
    } else if let members = try? decoder.container(keyedBy: Key.self) {
      self = .object(
        try members.allKeys.sorted { $0.stringValue < $1.stringValue }.map {
          ($0.stringValue, try members.decode(JSON.self, forKey: $0))
        })
    } else {
      let value = try decoder.singleValueContainer()
      if value.decodeNil() {
        self = .null
      } else if let flag = try? value.decode(Bool.self) {
        self = .bool(flag)
      } else if let number = try? value.decode(Double.self) {
        self = .number(number)
      } else {
        self = .string(try value.decode(String.self))
      }
    }
  }

  package func encode(to encoder: any Encoder) throws {
    switch self {
    case .object(let members):
      var container = encoder.container(keyedBy: Key.self)
      for (name, value) in members { try container.encode(value, forKey: Key(stringValue: name)) }
    case .array(let values):
      var container = encoder.unkeyedContainer()
      for value in values { try container.encode(value) }
    case .null:
      var container = encoder.singleValueContainer()
      try container.encodeNil()
    case .bool(let flag):
      var container = encoder.singleValueContainer()
      try container.encode(flag)
    case .number(let number):
      var container = encoder.singleValueContainer()
      if number.isFinite { try container.encode(number) } else { try container.encodeNil() }
    case .string(let text):
      var container = encoder.singleValueContainer()
      try container.encode(text)
    }
  }
}

extension JSON {
  /// The member `name` of an object; nil for other values or a missing member.
  package subscript(_ name: String) -> JSON? {
    guard case .object(let members) = self else { return nil }
    return members.first { $0.0 == name }?.1
  }

  package var doubleValue: Double? {
    if case .number(let value) = self { return value }
    return nil
  }

  package var intValue: Int? {
    guard let value = doubleValue, value == value.rounded(), abs(value) < 1e15 else { return nil }
    return Int(value)
  }

  package var stringValue: String? {
    if case .string(let value) = self { return value }
    return nil
  }

  package var arrayValue: [JSON]? {
    if case .array(let values) = self { return values }
    return nil
  }
}
