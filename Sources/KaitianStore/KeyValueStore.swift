/// What ranks need to find each other: the part of a store that any backend offers, including
/// a store reached through foreign callbacks (torch.distributed's `Store` from Python).
///
/// All methods block the calling thread (never an async executor thread) and are safe to call
/// from many threads. Values are bytes; counters made by `add` are stored as decimal ASCII so
/// that other tools can read them.
public protocol RendezvousStore: Sendable {
  /// Stores `value` under `key`, replacing any old value, and wakes waiters for `key`.
  func set(key: String, value: [UInt8]) throws(StoreError)

  /// Returns the value of `key`, waiting up to `timeout` for some process to set it.
  func get(key: String, timeout: Duration) throws(StoreError) -> [UInt8]

  /// Waits until every key in `keys` exists; the timeout error names the missing ones.
  func wait(keys: [String], timeout: Duration) throws(StoreError)

  /// Atomically adds `delta` to the decimal counter at `key` (absent counts as 0) and returns
  /// the new value. Throws `.invalidArgument` if the stored value is not a decimal integer or
  /// the sum overflows.
  func add(key: String, delta: Int64) throws(StoreError) -> Int64
}

/// The full key-value store that Kaitian's own server, its in-memory store and Redis offer:
/// rendezvous plus the operations job state and monitoring need.
public protocol KeyValueStore: RendezvousStore {
  /// Returns the value of `key`, or `nil` at once when it is absent.
  func tryGet(key: String) throws(StoreError) -> [UInt8]?

  /// Atomically replaces the value of `key` with `desired` if it currently equals `expected`,
  /// where `expected == nil` means "only if the key is absent".
  ///
  /// - Returns: the value stored after the operation, so the caller won if it equals
  ///   `desired`; `nil` only when the key is absent and stays absent (a non-nil `expected`
  ///   never matches an absent key).
  func compareAndSet(key: String, expected: [UInt8]?, desired: [UInt8]) throws(StoreError)
    -> [UInt8]?

  /// Removes `key`; returns whether it existed.
  func delete(key: String) throws(StoreError) -> Bool

  /// The keys that start with `prefix`, sorted; an empty prefix lists every key.
  func keys(prefix: String) throws(StoreError) -> [String]
}
