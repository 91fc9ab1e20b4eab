/// One request from a store client to the server.
public enum StoreRequest: Sendable, Equatable {
  case set(key: String, value: [UInt8])
  case get(key: String, timeout: Duration)
  case tryGet(key: String)
  case wait(keys: [String], timeout: Duration)
  case add(key: String, delta: Int64)
  case compareAndSet(key: String, expected: [UInt8]?, desired: [UInt8])
  case delete(key: String)
  case keys(prefix: String)

  /// How long the server may legitimately hold the request before answering.
  var blockingTime: Duration {
    switch self {
    case .get(_, let timeout), .wait(_, let timeout): timeout
    default: .zero
    }
  }
}

/// The server's answer to one request.
public enum StoreResponse: Sendable, Equatable {
  /// Success with nothing to return (`set`, `wait`).
  case done
  /// A value or its absence (`get`, `tryGet`, `compareAndSet`).
  case value([UInt8]?)
  /// A counter (`add`).
  case integer(Int64)
  /// A yes/no answer (`delete`).
  case flag(Bool)
  /// A key listing (`keys`).
  case keys([String])
  /// The operation failed on the server.
  case failure(StoreError)
}

/// Size limits of the store protocol, shared by server and clients so that a client rejects
/// an oversized request itself, with a clear error, instead of having its connection cut.
public struct StoreWireLimits: Sendable, Equatable {
  /// The largest frame payload, checked before any buffer is allocated.
  public var maxFrameSize: Int
  /// The longest key, in UTF-8 bytes (at most 65535, the width of its length field).
  public var maxKeySize: Int
  /// The most keys one `wait` may name.
  public var maxKeysPerWait: Int

  public init(maxFrameSize: Int = 64 << 20, maxKeySize: Int = 4096, maxKeysPerWait: Int = 65536) {
    precondition(maxFrameSize >= 64 && maxFrameSize <= Int(UInt32.max), "bad maxFrameSize")
    precondition(maxKeySize > 0 && maxKeySize <= Int(UInt16.max), "bad maxKeySize")
    precondition(maxKeysPerWait > 0, "bad maxKeysPerWait")
    self.maxFrameSize = maxFrameSize
    self.maxKeySize = maxKeySize
    self.maxKeysPerWait = maxKeysPerWait
  }

  public static let `default` = StoreWireLimits()
}

/// Encoding and decoding of store messages, as pure functions over byte arrays.
///
/// A frame is a `UInt32` big-endian payload length followed by the payload. A request payload
/// is an opcode byte and its fields; a response payload is a status byte and its fields. Keys
/// are a `UInt16` length plus UTF-8, values a `UInt32` length plus bytes, timeouts `UInt64`
/// milliseconds, integers big-endian two's complement.
///
/// The decoders are total: every byte sequence yields a message or a `.protocolViolation`,
/// never a trap, and they allocate no more than the input's size, because every length field
/// is checked against the bytes actually present before anything is copied. That lets the
/// server run them on whatever an authenticated but buggy peer sends, and lets tests fuzz them.
public enum StoreWire {
  /// Bytes of the length prefix of each frame.
  public static let frameHeaderSize = 4

  /// Request opcodes; explicit because they are the wire format.
  private enum Opcode: UInt8 {
    case set = 1
    case get = 2
    case tryGet = 3
    case wait = 4
    case add = 5
    case compareAndSet = 6
    case delete = 7
    case keys = 8
  }

  /// Response status bytes; explicit because they are the wire format.
  private enum Status: UInt8 {
    case done = 0
    case value = 1
    case noValue = 2
    case integer = 3
    case flag = 4
    case keys = 5
    case failure = 0xFF
  }

  // MARK: Requests

  /// The payload of `request` (without the frame header).
  public static func encode(_ request: StoreRequest) -> [UInt8] {
    var writer = ByteWriter()
    switch request {
    case .set(let key, let value):
      writer.byte(Opcode.set.rawValue)
      writer.key(key)
      writer.value(value)
    case .get(let key, let timeout):
      writer.byte(Opcode.get.rawValue)
      writer.key(key)
      writer.timeout(timeout)
    case .tryGet(let key):
      writer.byte(Opcode.tryGet.rawValue)
      writer.key(key)
    case .wait(let keys, let timeout):
      writer.byte(Opcode.wait.rawValue)
      writer.integer(UInt32(keys.count))
      for key in keys { writer.key(key) }
      writer.timeout(timeout)
    case .add(let key, let delta):
      writer.byte(Opcode.add.rawValue)
      writer.key(key)
      writer.integer(delta)
    case .compareAndSet(let key, let expected, let desired):
      writer.byte(Opcode.compareAndSet.rawValue)
      writer.key(key)
      writer.optionalValue(expected)
      writer.value(desired)
    case .delete(let key):
      writer.byte(Opcode.delete.rawValue)
      writer.key(key)
    case .keys(let prefix):
      writer.byte(Opcode.keys.rawValue)
      writer.key(prefix)
    }
    return writer.bytes
  }

  /// Decodes a request payload, enforcing `limits` on keys.
  public static func decodeRequest(
    _ bytes: [UInt8], limits: StoreWireLimits = .default
  ) throws(StoreError) -> StoreRequest {
    var reader = ByteReader(bytes, maxKeySize: limits.maxKeySize)
    let opcodeByte = try reader.byte()
    guard let opcode = Opcode(rawValue: opcodeByte) else {
      throw .protocolViolation("unknown request opcode \(opcodeByte)")
    }
    let request: StoreRequest
    switch opcode {
    case .set:
      request = .set(key: try reader.key(), value: try reader.value())
    case .get:
      request = .get(key: try reader.key(), timeout: try reader.timeout())
    case .tryGet:
      request = .tryGet(key: try reader.key())
    case .wait:
      let count = Int(try reader.integer(UInt32.self))
      guard count <= limits.maxKeysPerWait else {
        throw .protocolViolation(
          "wait for \(count) keys exceeds the limit of \(limits.maxKeysPerWait)")
      }
      // Each key takes at least its two length bytes: a count larger than that is a lie, and
      // checking it first keeps the array below from being sized by an attacker.
      guard count <= reader.remaining / 2 else {
        throw .protocolViolation("wait announces \(count) keys but the message is too short")
      }
      var keys: [String] = []
      keys.reserveCapacity(count)
      for _ in 0..<count { keys.append(try reader.key()) }
      request = .wait(keys: keys, timeout: try reader.timeout())
    case .add:
      request = .add(key: try reader.key(), delta: try reader.integer(Int64.self))
    case .compareAndSet:
      request = .compareAndSet(
        key: try reader.key(), expected: try reader.optionalValue(), desired: try reader.value())
    case .delete:
      request = .delete(key: try reader.key())
    case .keys:
      request = .keys(prefix: try reader.key())
    }
    try reader.finish()
    return request
  }

  // MARK: Responses

  /// The payload of `response` (without the frame header).
  public static func encode(_ response: StoreResponse) -> [UInt8] {
    var writer = ByteWriter()
    switch response {
    case .done:
      writer.byte(Status.done.rawValue)
    case .value(let value?):
      writer.byte(Status.value.rawValue)
      writer.value(value)
    case .value(nil):
      writer.byte(Status.noValue.rawValue)
    case .integer(let value):
      writer.byte(Status.integer.rawValue)
      writer.integer(value)
    case .flag(let flag):
      writer.byte(Status.flag.rawValue)
      writer.byte(flag ? 1 : 0)
    case .keys(let keys):
      writer.byte(Status.keys.rawValue)
      writer.integer(UInt32(keys.count))
      for key in keys { writer.key(key) }
    case .failure(let error):
      writer.byte(Status.failure.rawValue)
      writer.byte(error.wireCode)
      writer.value(Array(error.description.utf8))
    }
    return writer.bytes
  }

  /// Decodes a response payload, enforcing `limits` on keys.
  public static func decodeResponse(
    _ bytes: [UInt8], limits: StoreWireLimits = .default
  ) throws(StoreError) -> StoreResponse {
    var reader = ByteReader(bytes, maxKeySize: limits.maxKeySize)
    let statusByte = try reader.byte()
    guard let status = Status(rawValue: statusByte) else {
      throw .protocolViolation("unknown response status \(statusByte)")
    }
    let response: StoreResponse
    switch status {
    case .done:
      response = .done
    case .value:
      response = .value(try reader.value())
    case .noValue:
      response = .value(nil)
    case .integer:
      response = .integer(try reader.integer(Int64.self))
    case .flag:
      let flag = try reader.byte()
      guard flag <= 1 else { throw .protocolViolation("flag byte \(flag) is neither 0 nor 1") }
      response = .flag(flag == 1)
    case .keys:
      let count = Int(try reader.integer(UInt32.self))
      guard count <= reader.remaining / 2 else {
        throw .protocolViolation("key list announces \(count) keys but the message is too short")
      }
      var keys: [String] = []
      keys.reserveCapacity(count)
      for _ in 0..<count { keys.append(try reader.key()) }
      response = .keys(keys)
    case .failure:
      let code = try reader.byte()
      let message = String(decoding: try reader.value(), as: UTF8.self)
      response = .failure(StoreError(wireCode: code, message: message))
    }
    try reader.finish()
    return response
  }

  // MARK: Frames

  /// `payload` preceded by its length, ready to write to a socket.
  public static func frame(_ payload: [UInt8]) -> [UInt8] {
    var framed: [UInt8] = []
    framed.reserveCapacity(frameHeaderSize + payload.count)
    framed.appendBigEndian(UInt32(payload.count))
    framed += payload
    return framed
  }

  /// The payload length announced by a frame header, refused if over `maxFrameSize` before
  /// anything is allocated for it.
  public static func payloadLength(
    header: [UInt8], maxFrameSize: Int
  ) throws(StoreError) -> Int {
    guard header.count == frameHeaderSize else {
      throw .protocolViolation("frame header must be \(frameHeaderSize) bytes")
    }
    let length = header.reduce(0) { $0 << 8 | Int($1) }
    guard length <= maxFrameSize else {
      throw .protocolViolation(
        "frame of \(length) bytes exceeds the \(maxFrameSize)-byte limit")
    }
    return length
  }
}

/// Appends protocol fields to a byte array.
private struct ByteWriter {
  var bytes: [UInt8] = []

  mutating func byte(_ value: UInt8) { bytes.append(value) }

  mutating func integer<Value: FixedWidthInteger>(_ value: Value) { bytes.appendBigEndian(value) }

  /// Callers check key sizes against the limits first; the encoder itself must not trap on
  /// a long key, so the length is clamped and the decoder will reject the message.
  mutating func key(_ key: String) {
    let utf8 = Array(key.utf8)
    integer(UInt16(clamping: utf8.count))
    bytes += utf8.prefix(Int(UInt16.max))
  }

  mutating func value(_ value: [UInt8]) {
    integer(UInt32(clamping: value.count))
    bytes += value.prefix(Int(UInt32.max))
  }

  mutating func optionalValue(_ value: [UInt8]?) {
    if let value {
      byte(1)
      self.value(value)
    } else {
      byte(0)
    }
  }

  mutating func timeout(_ timeout: Duration) {
    integer(UInt64(clamping: max(timeout.milliseconds, 0)))
  }
}

/// Reads protocol fields from a byte array, checking every length against what is left.
private struct ByteReader {
  private let bytes: [UInt8]
  private var offset = 0
  private let maxKeySize: Int

  init(_ bytes: [UInt8], maxKeySize: Int) {
    self.bytes = bytes
    self.maxKeySize = maxKeySize
  }

  var remaining: Int { bytes.count - offset }

  mutating func byte() throws(StoreError) -> UInt8 {
    let slice = try take(1)
    return slice[slice.startIndex]
  }

  mutating func integer<Value: FixedWidthInteger>(_: Value.Type) throws(StoreError) -> Value {
    var value: Value = 0
    for byte in try take(Value.bitWidth / 8) {
      value = value << 8 | Value(truncatingIfNeeded: byte)
    }
    return value
  }

  mutating func key() throws(StoreError) -> String {
    let length = Int(try integer(UInt16.self))
    guard length <= maxKeySize else {
      throw .protocolViolation("key of \(length) bytes exceeds the \(maxKeySize)-byte limit")
    }
    guard let key = String(validating: try take(length), as: UTF8.self) else {
      throw .protocolViolation("key is not valid UTF-8")
    }
    return key
  }

  mutating func value() throws(StoreError) -> [UInt8] {
    Array(try take(Int(try integer(UInt32.self))))
  }

  mutating func optionalValue() throws(StoreError) -> [UInt8]? {
    switch try byte() {
    case 0: return nil
    case 1: return try value()
    case let flag: throw .protocolViolation("optional-value flag \(flag) is neither 0 nor 1")
    }
  }

  mutating func timeout() throws(StoreError) -> Duration {
    .milliseconds(Int64(clamping: try integer(UInt64.self)))
  }

  /// Requires that the whole message was consumed: trailing bytes mean the peer and we
  /// disagree about the format.
  func finish() throws(StoreError) {
    guard remaining == 0 else {
      throw .protocolViolation("\(remaining) unexpected bytes after the message")
    }
  }

  private mutating func take(_ count: Int) throws(StoreError) -> ArraySlice<UInt8> {
    guard count <= remaining else {
      throw .protocolViolation("message truncated: needs \(count) more bytes, has \(remaining)")
    }
    defer { offset += count }
    return bytes[offset..<offset + count]
  }
}
