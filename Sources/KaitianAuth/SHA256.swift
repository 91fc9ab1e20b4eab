/// SHA-256 (FIPS 180-4), in pure Swift so that authentication needs no crypto library.
///
/// Keys the HMACs of the connection handshake and of the store's values, and, with
/// KAITIAN_INTEGRITY, MACs every data frame; blocks are compressed straight from memory for that.
/// Why not swift-crypto: its Crypto module imports Foundation on Linux, which libKaitianC.so
/// keeps out; this one is checked against FIPS 180-4 and RFC 4231 vectors in the tests.
public struct SHA256: Sendable {
  public static let digestSize = 32
  static let blockSize = 64

  private static let roundConstants: [UInt32] = [
    0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4,
    0xab1c_5ed5, 0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe,
    0x9bdc_06a7, 0xc19b_f174, 0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f,
    0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da, 0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7,
    0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967, 0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc,
    0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85, 0xa2bf_e8a1, 0xa81a_664b,
    0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070, 0x19a4_c116,
    0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
    0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7,
    0xc671_78f2,
  ]

  private var state: [UInt32] = [
    0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab,
    0x5be0_cd19,
  ]
  /// Bytes not yet compressed, always fewer than one block.
  private var pending: [UInt8] = []
  /// Message length so far in bytes, for the final padding.
  private var messageLength: UInt64 = 0

  public init() {}

  /// The digest of `bytes` in one call.
  public static func hash<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> [UInt8] {
    var hasher = SHA256()
    hasher.update(bytes)
    return hasher.finalize()
  }

  /// Adds `bytes` to the message.
  public mutating func update<Bytes: Sequence<UInt8>>(_ bytes: Bytes) {
    let contiguous: Void? = bytes.withContiguousStorageIfAvailable {
      update(UnsafeRawBufferPointer($0))
    }
    if contiguous == nil { Array(bytes).withUnsafeBytes { update($0) } }
  }

  /// Adds `bytes` to the message: whole blocks are compressed straight from memory, which is
  /// what makes MACs on every data frame affordable (KAITIAN_INTEGRITY).
  public mutating func update(_ bytes: UnsafeRawBufferPointer) {
    guard var start = bytes.baseAddress, !bytes.isEmpty else { return }
    var remaining = bytes.count
    messageLength &+= UInt64(remaining)
    if !pending.isEmpty {
      let taken = min(Self.blockSize - pending.count, remaining)
      pending.append(contentsOf: UnsafeRawBufferPointer(start: start, count: taken))
      start += taken
      remaining -= taken
      guard pending.count == Self.blockSize else { return }
      let block = pending
      block.withUnsafeBytes { compress(blocks: $0.baseAddress!, count: 1) }
      pending.removeAll(keepingCapacity: true)
    }
    let whole = remaining / Self.blockSize
    if whole > 0 {
      compress(blocks: start, count: whole)
      start += whole * Self.blockSize
      remaining -= whole * Self.blockSize
    }
    if remaining > 0 {
      pending.append(contentsOf: UnsafeRawBufferPointer(start: start, count: remaining))
    }
  }

  /// Pads the message, and returns the 32-byte digest. The hasher is spent afterwards.
  public mutating func finalize() -> [UInt8] {
    let bitLength = messageLength &* 8
    var tail = pending
    tail.append(0x80)
    while tail.count % Self.blockSize != Self.blockSize - 8 { tail.append(0) }
    for shift in stride(from: 56, through: 0, by: -8) {
      tail.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift)))
    }
    tail.withUnsafeBytes { compress(blocks: $0.baseAddress!, count: $0.count / Self.blockSize) }
    pending = []
    var digest: [UInt8] = []
    digest.reserveCapacity(Self.digestSize)
    for word in state {
      digest.append(contentsOf: [
        UInt8(truncatingIfNeeded: word >> 24), UInt8(truncatingIfNeeded: word >> 16),
        UInt8(truncatingIfNeeded: word >> 8), UInt8(truncatingIfNeeded: word),
      ])
    }
    return digest
  }

  /// FIPS 180-4's compression of `count` consecutive 64-byte blocks at `blocks`.
  private mutating func compress(blocks: UnsafeRawPointer, count: Int) {
    var (h0, h1, h2, h3, h4, h5, h6, h7) = (
      state[0], state[1], state[2], state[3], state[4], state[5], state[6], state[7]
    )
    Self.roundConstants.withUnsafeBufferPointer { constants in
      withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 64) { schedule in
        for blockIndex in 0..<count {
          let block = blocks + blockIndex * Self.blockSize
          for index in 0..<16 {
            schedule[index] = UInt32(
              bigEndian: block.loadUnaligned(fromByteOffset: 4 * index, as: UInt32.self))
          }
          for index in 16..<64 {
            let w15 = schedule[index - 15]
            let w2 = schedule[index - 2]
            let sigma0 = w15.rotatedRight(7) ^ w15.rotatedRight(18) ^ (w15 >> 3)
            let sigma1 = w2.rotatedRight(17) ^ w2.rotatedRight(19) ^ (w2 >> 10)
            schedule[index] = schedule[index - 16] &+ sigma0 &+ schedule[index - 7] &+ sigma1
          }
          var (a, b, c, d, e, f, g, h) = (h0, h1, h2, h3, h4, h5, h6, h7)
          for index in 0..<64 {
            let sum1 = e.rotatedRight(6) ^ e.rotatedRight(11) ^ e.rotatedRight(25)
            let choice = (e & f) ^ (~e & g)
            let temp1 = h &+ sum1 &+ choice &+ constants[index] &+ schedule[index]
            let sum0 = a.rotatedRight(2) ^ a.rotatedRight(13) ^ a.rotatedRight(22)
            let majority = (a & b) ^ (a & c) ^ (b & c)
            let temp2 = sum0 &+ majority
            (h, g, f, e, d, c, b, a) = (g, f, e, d &+ temp1, c, b, a, temp1 &+ temp2)
          }
          h0 &+= a
          h1 &+= b
          h2 &+= c
          h3 &+= d
          h4 &+= e
          h5 &+= f
          h6 &+= g
          h7 &+= h
        }
      }
    }
    state = [h0, h1, h2, h3, h4, h5, h6, h7]
  }
}

extension UInt32 {
  fileprivate func rotatedRight(_ count: UInt32) -> UInt32 {
    (self >> count) | (self << (32 - count))
  }
}
