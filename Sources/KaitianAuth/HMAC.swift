/// HMAC-SHA256 (RFC 2104), used to prove knowledge of the job token without sending it.
public enum HMACSHA256 {
  public static let size = SHA256.digestSize

  /// The MAC of `message` under `key`.
  public static func authenticate<Message: Sequence<UInt8>>(
    _ message: Message, key: [UInt8]
  ) -> [UInt8] {
    var mac = HMACSHA256Stream(key: key)
    mac.update(message)
    return mac.finalize()
  }
}

/// HMAC-SHA256 of a message given in pieces, as a stream's frames arrive; `finalize` returns
/// the MAC and starts the next message under the same key.
public struct HMACSHA256Stream: Sendable {
  /// The hashers after the key's inner and outer pad blocks, computed once per key.
  private let innerStart: SHA256
  private let outerStart: SHA256
  private var inner: SHA256

  public init(key: [UInt8]) {
    var block = key.count > SHA256.blockSize ? SHA256.hash(key) : key
    block += [UInt8](repeating: 0, count: SHA256.blockSize - block.count)
    var inner = SHA256()
    inner.update(block.map { $0 ^ 0x36 })
    var outer = SHA256()
    outer.update(block.map { $0 ^ 0x5c })
    innerStart = inner
    outerStart = outer
    self.inner = inner
  }

  public mutating func update<Bytes: Sequence<UInt8>>(_ bytes: Bytes) { inner.update(bytes) }

  public mutating func update(_ bytes: UnsafeRawBufferPointer) { inner.update(bytes) }

  /// The MAC of everything added since the last `finalize` (or `init`).
  public mutating func finalize() -> [UInt8] {
    var outer = outerStart
    outer.update(inner.finalize())
    inner = innerStart
    return outer.finalize()
  }
}

/// Compares two byte strings in time that depends only on their lengths, so that an attacker
/// cannot learn how many leading bytes of a forged MAC were right by timing the rejection.
public func constantTimeEqual(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
  guard lhs.count == rhs.count else { return false }
  var difference: UInt8 = 0
  for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
  return difference == 0
}
