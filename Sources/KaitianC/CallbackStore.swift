import Glibc
import KaitianHeader
import KaitianStore

/// A rendezvous store made of the caller's C functions (ktStoreFromCallbacks), such as
/// torch.distributed's store reached from Python.
///
/// Each function returns 0 on success, 1 on timeout and -1 on any other failure; the header
/// says they may be called from any thread, which is what makes this class Sendable.
final class CallbackStore: RendezvousStore, @unchecked Sendable {
  /// A value's first read tries this capacity; most rendezvous values are far smaller.
  static let initialCapacity = 4096

  private let callbacks: ktStoreCallbacks_t

  /// Fails (nil) unless all four functions are present.
  init?(_ callbacks: ktStoreCallbacks_t) {
    guard callbacks.set != nil, callbacks.get != nil, callbacks.add != nil,
      callbacks.wait != nil
    else { return nil }
    self.callbacks = callbacks
  }

  func set(key: String, value: [UInt8]) throws(StoreError) {
    let status = value.withUnsafeBytes { bytes in
      callbacks.set(callbacks.userData, key, bytes.baseAddress, bytes.count)
    }
    try check(status, "set('\(key)')", waited: nil, keys: [key])
  }

  func get(key: String, timeout: Duration) throws(StoreError) -> [UInt8] {
    var capacity = Self.initialCapacity
    while true {
      var length = 0
      var value = [UInt8](repeating: 0, count: capacity)
      let status = value.withUnsafeMutableBytes { bytes in
        callbacks.get(
          callbacks.userData, key, bytes.baseAddress, capacity, &length, timeout.seconds)
      }
      if status == 2 {
        // The value is there but larger: ask again with the size the callback reported.
        guard length > capacity else {
          throw .foreign(
            .protocolViolation,
            "the store callback get('\(key)') asked for \(length) bytes, no more than the "
              + "\(capacity) it was given")
        }
        capacity = length
        continue
      }
      try check(status, "get('\(key)')", waited: timeout, keys: [key])
      guard length <= capacity else {
        throw .foreign(
          .protocolViolation,
          "the store callback get('\(key)') reported \(length) bytes in a \(capacity)-byte buffer")
      }
      return Array(value[..<length])
    }
  }

  func wait(keys: [String], timeout: Duration) throws(StoreError) {
    guard !keys.isEmpty else { return }
    let status = withCStrings(keys) { pointers in
      callbacks.wait(callbacks.userData, pointers, keys.count, timeout.seconds)
    }
    try check(status, "wait", waited: timeout, keys: keys)
  }

  func add(key: String, delta: Int64) throws(StoreError) -> Int64 {
    var result: Int64 = 0
    let status = callbacks.add(callbacks.userData, key, delta, &result)
    try check(status, "add('\(key)', \(delta))", waited: nil, keys: [key])
    return result
  }

  /// Turns a callback's status into the StoreError the rendezvous code expects.
  private func check(
    _ status: Int32, _ operation: String, waited: Duration?, keys: [String]
  ) throws(StoreError) {
    switch status {
    case 0: return
    case 1:
      let shown = keys.prefix(8).map { "'\($0)'" }.joined(separator: ", ")
      throw .foreign(
        .timeout,
        "the caller's store timed out after \(waited.map { "\($0)" } ?? "its deadline") "
          + "waiting for key(s) \(shown); the process that sets them may have failed or not "
          + "started yet")
    default:
      throw .foreign(
        .connectionLost,
        "the caller's store failed in \(operation) (its callback returned \(status)); see that "
          + "store's own error report")
    }
  }
}

extension Duration {
  /// Whole and fractional seconds, as the C callbacks take them.
  fileprivate var seconds: Double {
    let (seconds, attoseconds) = components
    return Double(seconds) + Double(attoseconds) * 1e-18
  }
}

/// Calls `body` with a C array of the strings, valid for the duration of the call.
private func withCStrings<Result>(
  _ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> Result
) -> Result {
  let copies = strings.map { UnsafePointer(strdup($0)!) as UnsafePointer<CChar>? }
  defer { for copy in copies { free(UnsafeMutablePointer(mutating: copy)) } }
  return copies.withUnsafeBufferPointer { body($0.baseAddress!) }
}
