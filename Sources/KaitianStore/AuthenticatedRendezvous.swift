import KaitianAuth

/// A rendezvous store whose values carry a MAC under the job token, checked on every read.
///
/// Why: the engine trusts what it reads back at set-up (a peer's endpoint, its shared-memory
/// segment name), and the store is not always the job's own: torch's TCPStore has no
/// authentication, and anyone holding a Redis password can write every job's keys there. A
/// value written by someone without the job token fails its check, and the read fails with an
/// error that names the key, instead of pointing a rank at an impostor's socket or segment.
///
/// A value is stored as `value || HMAC(token, label || key length || key || value)`. The key is
/// inside the MAC, so a genuine value cannot be moved to another key (rank 1's endpoint replayed
/// as rank 2's); the label keeps these MACs apart from the handshake's. Counters (`add`) and
/// `wait` pass through: a counter holds a number the store itself updates, and a forged one can
/// only delay or fail a job, which a writer of the store can do anyway.
///
/// What it does not do: stop a writer of the store from deleting or replaying a value that was
/// genuine for the same key (a stale endpoint of an earlier job with the same token and prefix);
/// the per-construction prefixes of the engine's callers make those keys unique per job.
public struct AuthenticatedRendezvous: RendezvousStore {
  private let base: any RendezvousStore
  private let token: JobToken

  static let label = Array("kaitian rendezvous value v1".utf8)

  public init(_ base: any RendezvousStore, token: JobToken) {
    self.base = base
    self.token = token
  }

  public func set(key: String, value: [UInt8]) throws(StoreError) {
    try base.set(key: key, value: value + mac(key: key, value: value))
  }

  public func get(key: String, timeout: Duration) throws(StoreError) -> [UInt8] {
    let sealed = try base.get(key: key, timeout: timeout)
    guard sealed.count >= HMACSHA256.size else {
      throw Self.forged(key, "it is \(sealed.count) bytes, shorter than its MAC")
    }
    let value = Array(sealed.dropLast(HMACSHA256.size))
    guard constantTimeEqual(Array(sealed.suffix(HMACSHA256.size)), mac(key: key, value: value))
    else {
      throw Self.forged(key, "its MAC does not match")
    }
    return value
  }

  public func wait(keys: [String], timeout: Duration) throws(StoreError) {
    try base.wait(keys: keys, timeout: timeout)
  }

  public func add(key: String, delta: Int64) throws(StoreError) -> Int64 {
    try base.add(key: key, delta: delta)
  }

  private func mac(key: String, value: [UInt8]) -> [UInt8] {
    let keyBytes = Array(key.utf8)
    var message = Self.label
    message.appendBigEndian(UInt32(keyBytes.count))
    message += keyBytes
    message += value
    return HMACSHA256.authenticate(message, key: token.secret)
  }

  private static func forged(_ key: String, _ why: String) -> StoreError {
    .authenticationFailed(
      "the store's value of '\(key)' failed its job-token check (\(why)): it was written by "
        + "someone who can write the store but does not hold this job's token, or the ranks "
        + "were started with different tokens (KAITIAN_TOKEN / KAITIAN_TOKEN_FILE)")
  }
}
