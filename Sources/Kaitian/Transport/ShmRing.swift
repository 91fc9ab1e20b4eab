import CKaitianShim

/// A single-producer single-consumer byte ring in shared memory, for one direction of a pair.
///
/// Indices are running byte totals (never wrapped), so `write - read` is the fill level.
/// Every message starts 8-byte aligned; with a capacity that is a multiple of 8, an element of
/// 1, 2, 4 or 8 bytes never straddles the wrap, which lets reductions read the ring in place.
struct ShmRing: @unchecked Sendable {
  static let headerBytes = 128
  static let alignment = 8

  private let writeIndex: UnsafeMutableRawPointer
  private let readIndex: UnsafeMutableRawPointer
  let data: UnsafeMutableRawPointer
  let capacity: Int

  init(at base: UnsafeMutableRawPointer, capacity: Int) {
    precondition(capacity > 0 && capacity % Self.alignment == 0)
    writeIndex = base
    readIndex = base + 64
    data = base + Self.headerBytes
    self.capacity = capacity
  }

  var written: Int { Int(kt_atomic_load_u64(writeIndex)) }
  var consumed: Int { Int(kt_atomic_load_u64(readIndex)) }

  func publishWritten(_ total: Int) { kt_atomic_store_u64(writeIndex, UInt64(total)) }
  func publishConsumed(_ total: Int) { kt_atomic_store_u64(readIndex, UInt64(total)) }

  static func aligned(_ index: Int) -> Int { (index + alignment - 1) & ~(alignment - 1) }
}
