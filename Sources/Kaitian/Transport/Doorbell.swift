import CKaitianShim

/// A futex word in shared memory that one rank sleeps on and its peers ring.
///
/// Why a counter and not a flag: the sleeper reads the count, re-checks its work, and sleeps
/// only while the count is unchanged, so a ring between the check and the sleep is never lost.
/// The `sleeping` word spares the ringer a system call when nobody sleeps.
struct Doorbell: @unchecked Sendable {
  private let counter: UnsafeMutableRawPointer
  private let sleeping: UnsafeMutableRawPointer

  /// Layout: counter at `base`, sleeping flag one cache line later.
  static let byteCount = 128

  init(at base: UnsafeMutableRawPointer) {
    counter = base
    sleeping = base + 64
  }

  var ticket: UInt32 { kt_atomic_load_u32(counter) }

  func ring() {
    _ = kt_atomic_fetch_add_u32(counter, 1)
    if kt_atomic_load_u32(sleeping) != 0 {
      _ = kt_futex_wake(counter, Int32.max)
    }
  }

  /// Sleeps until rung after `ticket` was read, or `timeoutNanoseconds` pass.
  func sleep(ifStill ticket: UInt32, timeoutNanoseconds: Int64) {
    kt_atomic_store_u32(sleeping, 1)
    if kt_atomic_load_u32(counter) == ticket {
      _ = kt_futex_wait(counter, ticket, timeoutNanoseconds)
    }
    kt_atomic_store_u32(sleeping, 0)
  }
}
