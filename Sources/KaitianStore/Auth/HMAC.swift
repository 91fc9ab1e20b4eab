/// HMAC-SHA256 (RFC 2104), used to prove knowledge of the job token without sending it.
public enum HMACSHA256 {
  public static let size = SHA256.digestSize

  /// The MAC of `message` under `key`.
  public static func authenticate<Message: Sequence<UInt8>>(
    _ message: Message, key: [UInt8]
  ) -> [UInt8] {
    var block = key.count > SHA256.blockSize ? SHA256.hash(key) : key
    block += [UInt8](repeating: 0, count: SHA256.blockSize - block.count)
    var inner = SHA256()
    inner.update(block.map { $0 ^ 0x36 })
    inner.update(message)
    var outer = SHA256()
    outer.update(block.map { $0 ^ 0x5c })
    outer.update(inner.finalize())
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
