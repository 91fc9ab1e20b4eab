import KaitianPOSIX

/// A `KeyValueStore` in this process's memory.
///
/// Tests that run ranks as threads share one instance, and `StoreServer` keeps its state in
/// one. Blocking reads sleep on a condition variable that every write broadcasts, which is
/// simple and fast enough for rendezvous traffic (a few writes per rank per job phase).
public final class InMemoryStore: KeyValueStore {
  private struct State {
    var values: [String: [UInt8]] = [:]
    /// Bytes of every key and value held, for `maxStoredBytes`.
    var storedBytes = 0
    var isShutDown = false
  }

  private let state = ConditionLock(State())
  /// The most bytes of keys and values held at once; a write that would pass it fails.
  public let maxStoredBytes: Int

  /// - Parameter maxStoredBytes: why a quota: every authenticated client may write, and a
  ///   buggy or hostile one writing new keys in a loop would otherwise grow the store until the
  ///   host runs out of memory, taking the job (and the launcher that serves the store) down.
  public init(maxStoredBytes: Int = .max) {
    precondition(maxStoredBytes > 0, "maxStoredBytes must be positive")
    self.maxStoredBytes = maxStoredBytes
  }

  /// Ends every blocked `get` and `wait` with a `.stopped` error and refuses all later
  /// operations; the server calls it when it stops so no client thread hangs.
  public func shutDown() {
    state.withLock { $0.isShutDown = true }
    state.broadcast()
  }

  public func set(key: String, value: [UInt8]) throws(StoreError) {
    try mutate { values, stored throws(StoreError) in
      try store(value, at: key, in: &values, stored: &stored)
    }
  }

  public func get(key: String, timeout: Duration) throws(StoreError) -> [UInt8] {
    let found = try state.wait(until: .after(timeout)) { state throws(StoreError) in
      guard !state.isShutDown else { throw StoreError.stopped }
      return state.values[key]
    }
    guard let found else { throw .timeout(missing: [key], waited: timeout) }
    return found
  }

  public func tryGet(key: String) throws(StoreError) -> [UInt8]? {
    try read { $0[key] }
  }

  public func wait(keys: [String], timeout: Duration) throws(StoreError) {
    let done = try state.wait(until: .after(timeout)) { state throws(StoreError) -> Bool? in
      guard !state.isShutDown else { throw StoreError.stopped }
      return keys.allSatisfy { state.values[$0] != nil } ? true : nil
    }
    if done == nil {
      let missing = try read { values in keys.filter { values[$0] == nil } }
      throw .timeout(missing: missing, waited: timeout)
    }
  }

  public func add(key: String, delta: Int64) throws(StoreError) -> Int64 {
    try mutate { values, stored throws(StoreError) in
      var current: Int64 = 0
      if let existing = values[key] {
        guard let parsed = Int64(String(decoding: existing, as: UTF8.self)) else {
          throw .invalidArgument(
            "store key '\(key)' holds a value that is not a decimal integer, so add() cannot "
              + "use it as a counter; use a separate key for counters")
        }
        current = parsed
      }
      let (sum, overflow) = current.addingReportingOverflow(delta)
      guard !overflow else {
        throw .invalidArgument("add(\(delta)) to store key '\(key)' (\(current)) overflows Int64")
      }
      try store(Array(String(sum).utf8), at: key, in: &values, stored: &stored)
      return sum
    }
  }

  public func compareAndSet(
    key: String, expected: [UInt8]?, desired: [UInt8]
  ) throws(StoreError) -> [UInt8]? {
    try mutate { values, stored throws(StoreError) in
      if values[key] == expected { try store(desired, at: key, in: &values, stored: &stored) }
      return values[key]
    }
  }

  public func delete(key: String) throws(StoreError) -> Bool {
    try mutate { values, stored in
      guard let removed = values.removeValue(forKey: key) else { return false }
      stored -= key.utf8.count + removed.count
      return true
    }
  }

  /// Puts `value` at `key`, keeping `stored` up to date, unless that passes `maxStoredBytes`.
  private func store(
    _ value: [UInt8], at key: String, in values: inout [String: [UInt8]], stored: inout Int
  ) throws(StoreError) {
    let old = values[key].map { key.utf8.count + $0.count } ?? 0
    let after = stored - old + key.utf8.count + value.count
    guard after <= maxStoredBytes || after <= stored else {
      throw .quotaExceeded(key: key, stored: stored, after: after, quota: maxStoredBytes)
    }
    values[key] = value
    stored = after
  }

  public func keys(prefix: String) throws(StoreError) -> [String] {
    try read { values in values.keys.filter { $0.hasPrefix(prefix) }.sorted() }
  }

  /// Runs `body` on the values and wakes waiters, since it may have created keys.
  private func mutate<Result>(
    _ body: (inout [String: [UInt8]], inout Int) throws(StoreError) -> Result
  ) throws(StoreError) -> Result {
    defer { state.broadcast() }
    return try state.withLock { state throws(StoreError) in
      guard !state.isShutDown else { throw StoreError.stopped }
      return try body(&state.values, &state.storedBytes)
    }
  }

  private func read<Result>(
    _ body: ([String: [UInt8]]) -> Result
  ) throws(StoreError) -> Result {
    try state.withLock { state throws(StoreError) in
      guard !state.isShutDown else { throw StoreError.stopped }
      return body(state.values)
    }
  }
}
