import KaitianPOSIX
import KaitianStore
import Synchronization

/// A `KeyValueStore` in Redis: one job's keys under `prefix` (`kaitian/<job id>/`), each with a
/// time to live so that they expire after the job even if nobody cleans up.
///
/// Besides the keys, the store keeps a marker, the key `prefix` itself, whose time to live every
/// write refreshes. Writes and waits check it: when it is gone, Redis lost the job's data (a
/// restart without persistence, a FLUSHALL, eviction) and the call fails with an error that
/// says so instead of waiting for keys that will never come back.
///
/// Like `StoreClient`, the store uses one connection and never reconnects: a reconnect could
/// replay an `add` and would hide a restart that lost keys. Once the connection fails, every
/// call throws the error that names Redis and the cause.
///
/// `get` and `wait` poll with a backoff from 1 ms to 50 ms rather than block in Redis: Redis
/// has no blocking read of plain string keys (BLPOP works on lists, keyspace notifications need
/// server configuration), and polling keeps the values plain strings any tool can read, keeps
/// the deadline on this side, and holds the connection only for one short request at a time,
/// so threads sharing the store are not held up by a long wait.
public final class RedisStore: KeyValueStore {
  /// 24 hours: long enough for a training job, short enough that abandoned jobs go away.
  public static let defaultJobTTL: Duration = .seconds(24 * 3600)

  public let url: RedisURL
  public let prefix: String
  public let jobTTL: Duration
  private let operationTimeout: Duration
  private let maxKeySize: Int
  /// The largest value: what this client's decoder accepts back (`RESPLimits.maxBulkLength`).
  private let maxValueSize: Int
  private let state: Mutex<State>
  /// The local address of the connection, the interface that reaches Redis.
  public let localHost: String?

  private enum State {
    case open(RedisConnection)
    case broken(StoreError)
  }

  /// The prefix of a job's keys: `kaitian/<job id>/`.
  public static func prefix(jobID: String) -> String { "kaitian/\(jobID)/" }

  /// Connects, logs in and marks the job as present in Redis.
  ///
  /// - Parameters:
  ///   - prefix: put before every key, normally `RedisStore.prefix(jobID:)`; must not be empty.
  ///   - jobTTL: the time to live every write gives its key (and the job's marker).
  ///   - connectTimeout: how long to retry a refused connection (Redis may start later).
  ///   - operationTimeout: how long one request may take before Redis is considered gone.
  ///   - tls: for a `rediss://` URL; nil reads the settings from the environment (`RedisTLS`).
  public init(
    url: RedisURL, prefix: String, jobTTL: Duration = defaultJobTTL,
    connectTimeout: Duration = .seconds(30), operationTimeout: Duration = .seconds(30),
    limits: RESPLimits = .default, maxKeySize: Int = StoreWireLimits.default.maxKeySize,
    tls: RedisTLS? = nil
  ) throws(StoreError) {
    guard !prefix.isEmpty else {
      throw .foreign(.invalidArgument, "the Redis key prefix is empty; use kaitian/<job id>/")
    }
    guard jobTTL >= .milliseconds(1) else {
      throw .foreign(.invalidArgument, "the job TTL \(jobTTL) must be at least 1 ms")
    }
    var url = url
    if url.password == nil { url.password = try RedisURL.passwordFromEnvironment() }
    let connection = try RedisConnection.open(
      url, limits: limits, connectTimeout: connectTimeout, operationTimeout: operationTimeout,
      tls: tls)
    self.url = url
    self.prefix = prefix
    self.jobTTL = jobTTL
    self.operationTimeout = operationTimeout
    self.maxKeySize = maxKeySize
    self.maxValueSize = limits.maxBulkLength
    self.localHost = connection.localHost
    self.state = Mutex(.open(connection))
    let reply = try request(
      RESPCommand(["SET", prefix, "1", "PX", "\(jobTTL.expiryMilliseconds)", "NX"].map(Self.bytes)))
    guard reply == .simple("OK") || reply == .bulk(nil) else {
      throw unexpected(reply, "SET")
    }
  }

  deinit {
    if case .open(let connection) = state.withLock({ $0 }) { connection.close() }
  }

  // MARK: KeyValueStore

  public func set(key: String, value: [UInt8]) throws(StoreError) {
    try checkValue(value, key: key)
    let reply = try write(Scripts.set, key: key, [value])
    guard reply == .simple("OK") || reply == .bulk(Self.bytes("OK")) else {
      throw unexpected(reply, "set")
    }
  }

  public func get(key: String, timeout: Duration) throws(StoreError) -> [UInt8] {
    let name = try stored(key)
    var value: [UInt8]?
    try poll(timeout: timeout) { () throws(StoreError) -> [String] in
      value = try self.values([name])[0]
      return value == nil ? [key] : []
    }
    return value ?? []
  }

  public func tryGet(key: String) throws(StoreError) -> [UInt8]? {
    let name = try stored(key)
    let reply = try request(RESPCommand([Self.bytes("GET"), Self.bytes(name)]))
    guard case .bulk(let value) = reply else { throw unexpected(reply, "GET") }
    return value
  }

  public func wait(keys: [String], timeout: Duration) throws(StoreError) {
    var names: [String] = []
    for key in keys { names.append(try stored(key)) }
    try poll(timeout: timeout) { () throws(StoreError) -> [String] in
      zip(keys, try self.values(names)).filter { $0.1 == nil }.map(\.0)
    }
  }

  public func add(key: String, delta: Int64) throws(StoreError) -> Int64 {
    let reply = try write(Scripts.add, key: key, [Self.bytes("\(delta)")])
    switch reply {
    case .integer(let value): return value
    case .error(let message):
      throw .foreign(
        .invalidArgument,
        "cannot add \(delta) to store key '\(key)' in Redis at \(url.server): \(message) "
          + "(the value is not a decimal integer, or the sum overflows 64 bits)")
    default: throw unexpected(reply, "add")
    }
  }

  public func compareAndSet(
    key: String, expected: [UInt8]?, desired: [UInt8]
  ) throws(StoreError) -> [UInt8]? {
    try checkValue(desired, key: key)
    let reply = try write(
      Scripts.compareAndSet, key: key,
      [desired, Self.bytes(expected == nil ? "0" : "1"), expected ?? []])
    guard case .bulk(let value) = reply else { throw unexpected(reply, "compareAndSet") }
    return value
  }

  public func delete(key: String) throws(StoreError) -> Bool {
    let reply = try request(RESPCommand([Self.bytes("DEL"), Self.bytes(try stored(key))]))
    guard case .integer(let count) = reply else { throw unexpected(reply, "DEL") }
    return count > 0
  }

  public func keys(prefix keyPrefix: String) throws(StoreError) -> [String] {
    let names = try scan(prefix + keyPrefix)
    return Set(names.map { String($0.dropFirst(prefix.count)) }.filter { !$0.isEmpty }).sorted()
  }

  // MARK: Job end

  /// Shortens the time to live of every key of the job (and its marker) to `expireAfter`, so a
  /// monitor can still read the finished job for a while and then Redis drops it. Returns how
  /// many keys it changed.
  @discardableResult
  public func finish(expireAfter: Duration) throws(StoreError) -> Int {
    var changed = 0
    for name in try scan(prefix) {
      let reply = try request(
        RESPCommand([
          Self.bytes("PEXPIRE"), Self.bytes(name), Self.bytes("\(expireAfter.expiryMilliseconds)"),
        ]))
      if reply == .integer(1) { changed += 1 }
    }
    return changed
  }

  /// The remaining time to live of `key` in Redis, nil when the key is absent or has none.
  public func timeToLive(key: String) throws(StoreError) -> Duration? {
    let reply = try request(RESPCommand([Self.bytes("PTTL"), Self.bytes(try stored(key))]))
    guard case .integer(let milliseconds) = reply else { throw unexpected(reply, "PTTL") }
    return milliseconds >= 0 ? .milliseconds(milliseconds) : nil
  }

  // MARK: Requests

  /// Runs one command under the lock; a failure of the connection breaks the store for good.
  private func request(_ command: RESPCommand) throws(StoreError) -> RESPValue {
    try state.withLock { state throws(StoreError) -> RESPValue in
      let connection: RedisConnection
      switch state {
      case .open(let open): connection = open
      case .broken(let error): throw error
      }
      do throws(StoreError) {
        return try connection.send(command, timeout: operationTimeout)
      } catch {
        state = .broken(error)
        throw error
      }
    }
  }

  /// Runs a write script on `key` with the job's marker as KEYS[2] and the TTL as ARGV[1].
  private func write(
    _ script: String, key: String, _ arguments: [[UInt8]]
  ) throws(StoreError) -> RESPValue {
    let name = try stored(key)
    let reply = try request(
      RESPCommand(
        [
          Self.bytes("EVAL"), Self.bytes(script), Self.bytes("2"), Self.bytes(name),
          Self.bytes(prefix),
          Self.bytes("\(jobTTL.expiryMilliseconds)"),
        ] + arguments))
    if case .error(let message) = reply, message.hasPrefix(Scripts.goneError) {
      throw keysGone()
    }
    return reply
  }

  /// The values of `names` (nil where absent), after checking that the job's marker is there.
  private func values(_ names: [String]) throws(StoreError) -> [[UInt8]?] {
    let reply = try request(RESPCommand(([prefix] + names).map(Self.bytes)).prepending("MGET"))
    guard case .array(let elements?) = reply, elements.count == names.count + 1 else {
      throw unexpected(reply, "MGET")
    }
    var values: [[UInt8]?] = []
    for element in elements {
      guard case .bulk(let value) = element else { throw unexpected(reply, "MGET") }
      values.append(value)
    }
    guard values[0] != nil else { throw keysGone() }
    return Array(values.dropFirst())
  }

  /// Calls `check`, which returns the keys still missing, until it returns none, sleeping
  /// 1 ms, 2 ms, ... up to 50 ms in between; throws a timeout that names the missing keys once
  /// `timeout` has passed.
  private func poll(
    timeout: Duration, until check: () throws(StoreError) -> [String]
  ) throws(StoreError) {
    let start = ContinuousClock.now
    var pause = Duration.milliseconds(1)
    while true {
      let missing = try check()
      if missing.isEmpty { return }
      let waited = ContinuousClock.now - start
      guard waited < timeout else {
        throw .timeout(
          missing: missing, waited: timeout, location: "in Redis at \(url.server) under \(prefix)")
      }
      sleep(for: min(pause, timeout - waited))
      pause = min(pause * 2, .milliseconds(50))
    }
  }

  /// Every key name in Redis that starts with `namePrefix`, by SCAN (KEYS would block Redis).
  private func scan(_ namePrefix: String) throws(StoreError) -> [String] {
    let pattern = Self.globEscaped(namePrefix) + "*"
    var cursor = "0"
    var names: [String] = []
    repeat {
      let reply = try request(RESPCommand("SCAN", cursor, "MATCH", pattern, "COUNT", "1000"))
      guard case .array(let parts?) = reply, parts.count == 2,
        case .bulk(let next?) = parts[0], case .array(let found?) = parts[1]
      else { throw unexpected(reply, "SCAN") }
      for element in found {
        guard case .bulk(let name?) = element else { throw unexpected(reply, "SCAN") }
        names.append(String(decoding: name, as: UTF8.self))
      }
      cursor = String(decoding: next, as: UTF8.self)
    } while cursor != "0"
    return names
  }

  /// The name of `key` in Redis, after the checks `StoreClient` makes too.
  private func stored(_ key: String) throws(StoreError) -> String {
    guard !key.isEmpty else {
      throw .foreign(.invalidArgument, "store keys must not be empty (Redis store)")
    }
    let size = key.utf8.count
    guard size <= maxKeySize else {
      throw .foreign(
        .invalidArgument,
        "store key of \(size) bytes is longer than the \(maxKeySize)-byte limit "
          + "(StoreWireLimits.maxKeySize): \(key.prefix(64))...")
    }
    return prefix + key
  }

  /// A value this client could not read back is refused before it reaches Redis.
  private func checkValue(_ value: [UInt8], key: String) throws(StoreError) {
    guard value.count <= maxValueSize else {
      throw .foreign(
        .valueTooLarge,
        "the value of store key '\(key)' has \(value.count) bytes, over the \(maxValueSize)-byte "
          + "limit (RESPLimits.maxBulkLength); store large data elsewhere or raise the limit")
    }
  }

  private func keysGone() -> StoreError {
    .foreign(
      .connectionLost,
      "Redis at \(url.server) no longer holds the job's keys under \(prefix) (restarted? "
        + "flushed? evicted?); a Redis without persistence loses them when it restarts: "
        + "restart the job")
  }

  private func unexpected(_ reply: RESPValue, _ operation: String) -> StoreError {
    .foreign(
      .protocolViolation,
      "Redis at \(url.server) answered \(operation) with an unexpected reply: \(reply)")
  }

  private static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

  /// `text` with Redis glob's special characters escaped, for SCAN MATCH.
  static func globEscaped(_ text: String) -> String {
    var result = ""
    for character in text {
      if "*?[]\\^".contains(character) { result.append("\\") }
      result.append(character)
    }
    return result
  }
}

/// The Lua scripts of the writes. Each refreshes the job marker's TTL first and fails with
/// `goneError` when the marker is absent, so that a write never silently starts a new job in a
/// Redis that lost the old one. KEYS[1] is the key, KEYS[2] the marker, ARGV[1] the TTL in ms.
private enum Scripts {
  static let goneError = "KAITIAN_GONE"

  private static let checkMarker = """
    if redis.call('PEXPIRE', KEYS[2], ARGV[1]) == 0 then
      return redis.error_reply('\(goneError) the job marker is missing')
    end
    """

  /// ARGV[2]: the value.
  static let set =
    checkMarker + """

      redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
      return 'OK'
      """

  /// ARGV[2]: the delta. INCRBY's own error (not an integer, overflow) is returned as is.
  static let add =
    checkMarker + """

      local ok, value = pcall(redis.call, 'INCRBY', KEYS[1], ARGV[2])
      if not ok then return redis.error_reply(value.err or tostring(value)) end
      redis.call('PEXPIRE', KEYS[1], ARGV[1])
      return value
      """

  /// ARGV[2]: desired; ARGV[3]: "1" if a value is expected, "0" for "only if absent";
  /// ARGV[4]: the expected value.
  static let compareAndSet =
    checkMarker + """

      local current = redis.call('GET', KEYS[1])
      local matches
      if ARGV[3] == '1' then matches = (current == ARGV[4]) else matches = (current == false) end
      if matches then
        redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
        return ARGV[2]
      end
      return current
      """
}

extension RESPCommand {
  fileprivate func prepending(_ word: String) -> RESPCommand {
    RESPCommand([Array(word.utf8)] + arguments)
  }
}

extension Duration {
  /// Whole milliseconds, at least 1: Redis refuses an expiry of 0 (`PX`, `PEXPIRE`).
  var expiryMilliseconds: Int64 { max(1, milliseconds) }
}
