/// Grow-only temporary memory for algorithms that need room besides the user's buffers.
///
/// Threading: engine thread only. One per communicator, reused by every call, so steady-state
/// training allocates nothing per step.
final class ScratchBuffer {
  private var storage = UnsafeMutableRawBufferPointer(start: nil, count: 0)

  /// At least `byteCount` bytes, 64-byte aligned; valid until the next call to `bytes`.
  func bytes(_ byteCount: Int) -> UnsafeMutableRawPointer {
    if storage.count < max(byteCount, 1) {
      storage.deallocate()
      storage = .allocate(byteCount: max(byteCount, 64), alignment: 64)
    }
    return storage.baseAddress!
  }

  deinit { storage.deallocate() }
}
