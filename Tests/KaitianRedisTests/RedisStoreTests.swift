import Glibc
import KaitianPOSIX
import KaitianRedis
import KaitianStore
import Synchronization
import Testing

@Test("redis-server is installed where CI runs (env CI set)")
func redisServerInstalledInCI() {
  #expect(
    RedisServer.isInstalled || getenv("CI") == nil,
    "CI must exercise Redis: \(RedisServer.notInstalledReason)")
}

@Suite(.enabled(if: RedisServer.isInstalled, RedisServer.notInstalledReason), .serialized)
struct RedisStoreTests {
  private func store(
    _ server: RedisServer, job: String = "job-a", ttl: Duration = RedisStore.defaultJobTTL
  ) throws -> RedisStore {
    try RedisStore(
      url: server.url, prefix: RedisStore.prefix(jobID: job), jobTTL: ttl,
      connectTimeout: .seconds(5), operationTimeout: .seconds(5))
  }

  @Test func setGetAddWaitCompareAndSetDeleteKeys() throws {
    let server = try RedisServer()
    let store = try store(server)
    try store.set(key: "a", value: [1, 2, 3])
    #expect(try store.get(key: "a", timeout: .seconds(1)) == [1, 2, 3])
    #expect(try store.tryGet(key: "missing") == nil)
    #expect(try store.add(key: "n", delta: 5) == 5)
    #expect(try store.add(key: "n", delta: -7) == -2)
    #expect(try store.tryGet(key: "n") == Array("-2".utf8))
    try store.wait(keys: ["a", "n"], timeout: .seconds(1))

    // Absent expected: only if absent; then a matching and a stale expected value.
    #expect(try store.compareAndSet(key: "c", expected: nil, desired: [7]) == [7])
    #expect(try store.compareAndSet(key: "c", expected: nil, desired: [8]) == [7])
    #expect(try store.compareAndSet(key: "c", expected: [7], desired: [9]) == [9])
    #expect(try store.compareAndSet(key: "c", expected: [7], desired: [10]) == [9])
    #expect(try store.compareAndSet(key: "absent", expected: [1], desired: [2]) == nil)
    #expect(try store.tryGet(key: "absent") == nil)

    #expect(try store.keys(prefix: "") == ["a", "c", "n"])
    #expect(try store.keys(prefix: "c") == ["c"])
    #expect(try store.delete(key: "a"))
    #expect(try !store.delete(key: "a"))
    #expect(try store.keys(prefix: "") == ["c", "n"])

    try store.set(key: "text", value: Array("x".utf8))
    let error = #expect(throws: StoreError.self) { try store.add(key: "text", delta: 1) }
    #expect(error?.code == .invalidArgument)
    #expect(error?.description.contains("'text'") == true)
  }

  @Test func waitsForAKeySetLaterAndTimesOutNamingMissingKeys() throws {
    let server = try RedisServer()
    let waiter = try store(server)
    let setter = try store(server)
    let thread = try OSThread.spawn(name: "setter") {
      usleep(100_000)
      try? setter.set(key: "late", value: [42])
    }
    #expect(try waiter.get(key: "late", timeout: .seconds(10)) == [42])
    thread.join()

    let start = ContinuousClock.now
    let error = #expect(throws: StoreError.self) {
      try waiter.wait(keys: ["late", "never"], timeout: .milliseconds(200))
    }
    #expect(ContinuousClock.now - start >= .milliseconds(200))
    #expect(error?.code == .timeout)
    #expect(error?.description.contains("'never'") == true)
    #expect(error?.description.contains("'late'") == false)
    #expect(error?.description.contains("Redis at 127.0.0.1:\(server.port)") == true)
  }

  @Test func twoJobsDoNotSeeEachOthersKeys() throws {
    let server = try RedisServer()
    let first = try store(server, job: "first")
    let second = try store(server, job: "second")
    try first.set(key: "rank/0", value: [1])
    try second.set(key: "rank/0", value: [2])
    #expect(try first.add(key: "count", delta: 1) == 1)
    #expect(try second.add(key: "count", delta: 1) == 1)
    #expect(try first.get(key: "rank/0", timeout: .seconds(1)) == [1])
    #expect(try second.get(key: "rank/0", timeout: .seconds(1)) == [2])
    #expect(try first.keys(prefix: "") == ["count", "rank/0"])
    #expect(try first.delete(key: "rank/0"))
    #expect(try second.tryGet(key: "rank/0") == [2])
    // Glob characters in a job's prefix match only themselves.
    let globby = try store(server, job: "f*")
    try globby.set(key: "x", value: [0])
    #expect(try globby.keys(prefix: "") == ["x"])
    #expect(try first.keys(prefix: "") == ["count"])
  }

  @Test func everyWriteSetsTheJobTTLAndFinishShortensIt() throws {
    let server = try RedisServer()
    let ttl = Duration.seconds(600)
    let store = try store(server, ttl: ttl)
    try store.set(key: "set", value: [1])
    _ = try store.add(key: "add", delta: 1)
    _ = try store.compareAndSet(key: "cas", expected: nil, desired: [1])
    for key in ["set", "add", "cas"] {
      let left = try #require(try store.timeToLive(key: key), "\(key) has no TTL")
      #expect(left > .seconds(590) && left <= ttl, "\(key): \(left)")
    }
    let other = try self.store(server, job: "other")
    try other.set(key: "set", value: [1])

    #expect(try store.finish(expireAfter: .seconds(60)) == 4)  // three keys and the marker
    for key in ["set", "add", "cas"] {
      let left = try #require(try store.timeToLive(key: key))
      #expect(left <= .seconds(60) && left > .seconds(50), "\(key): \(left)")
    }
    // Another job's keys keep their TTL.
    #expect(try #require(try other.timeToLive(key: "set")) > .seconds(3600))
    // And the keys really expire.
    try store.finish(expireAfter: .milliseconds(50))
    usleep(300_000)
    #expect(try store.tryGet(key: "set") == nil)
  }

  @Test func passwordFromTheURL() throws {
    let server = try RedisServer(arguments: ["--requirepass", "s3cret"])
    func connect(_ text: String) throws -> RedisStore {
      try RedisStore(
        url: try RedisURL(parsing: text), prefix: "kaitian/auth/", connectTimeout: .seconds(5))
    }
    let store = try connect("redis://:s3cret@127.0.0.1:\(server.port)")
    try store.set(key: "k", value: [1])
    #expect(try store.tryGet(key: "k") == [1])

    let wrong = #expect(throws: StoreError.self) {
      try connect("redis://:nope@127.0.0.1:\(server.port)")
    }
    #expect(wrong?.code == .authenticationFailed)
    #expect(wrong?.description.contains("Redis at 127.0.0.1:\(server.port)") == true)
    #expect(wrong?.description.contains("nope") == false, "the password is never shown")

    let none = #expect(throws: StoreError.self) {
      try connect("redis://127.0.0.1:\(server.port)")
    }
    #expect(none?.code == .authenticationFailed)
    #expect(none?.description.contains("needs a password") == true)

    // Kept off the command line: REDIS_PASSWORD, else a file named by REDIS_PASSWORD_FILE.
    // (In this test, not its own: the environment is the whole test process's.)
    setenv(RedisURL.passwordVariable, "s3cret", 1)
    defer { unsetenv(RedisURL.passwordVariable) }
    #expect(try connect("redis://127.0.0.1:\(server.port)").tryGet(key: "k") == [1])
    unsetenv(RedisURL.passwordVariable)
    let path = "/tmp/kaitian-redis-password-\(getpid())"
    defer { unlink(path) }
    let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    _ = write(descriptor, "s3cret\n", 7)
    close(descriptor)
    setenv(RedisURL.passwordFileVariable, path, 1)
    defer { unsetenv(RedisURL.passwordFileVariable) }
    #expect(try connect("redis://127.0.0.1:\(server.port)").tryGet(key: "k") == [1])
    setenv(RedisURL.passwordFileVariable, "/nonexistent/kaitian-password", 1)
    let unreadable = #expect(throws: StoreError.self) {
      try connect("redis://127.0.0.1:\(server.port)")
    }
    #expect(unreadable?.description.contains("REDIS_PASSWORD_FILE=/nonexistent") == true)
  }

  @Test func killedMidWaitFailsWithinTheTimeoutAndSaysRestarted() throws {
    let server = try RedisServer()
    let store = try store(server)
    let killer = try OSThread.spawn(name: "killer") {
      usleep(300_000)
      server.kill()
    }
    let start = ContinuousClock.now
    let error = #expect(throws: StoreError.self) {
      _ = try store.get(key: "never", timeout: .seconds(20))
    }
    killer.join()
    #expect(ContinuousClock.now - start < .seconds(20), "the error came within the timeout")
    #expect(error?.code == .connectionLost)
    #expect(error?.description.contains("Redis at 127.0.0.1:\(server.port)") == true)
    #expect(error?.description.contains("(restarted?)") == true, "\(String(describing: error))")

    // Back up, empty: the old store stays failed instead of silently using the new server.
    try server.start()
    let again = #expect(throws: StoreError.self) { try store.set(key: "k", value: [1]) }
    #expect(again?.code == .connectionLost)
  }

  @Test func lostDataIsReportedNotWaitedFor() throws {
    let server = try RedisServer()
    let store = try store(server)
    try store.set(key: "k", value: [1])
    let waiter = try OSThread.spawn(name: "flusher") {
      usleep(200_000)
      // As a restart without persistence would: every key is gone, connections stay up.
      _ = try? run("/usr/bin/redis-cli", ["-p", "\(server.port)", "FLUSHALL"])
    }
    let start = ContinuousClock.now
    let error = #expect(throws: StoreError.self) {
      try store.wait(keys: ["never"], timeout: .seconds(20))
    }
    waiter.join()
    #expect(ContinuousClock.now - start < .seconds(20))
    #expect(error?.description.contains("no longer holds the job's keys") == true)
    #expect(error?.description.contains("(restarted?") == true)
    let write = #expect(throws: StoreError.self) { try store.set(key: "k", value: [2]) }
    #expect(write?.description.contains("no longer holds the job's keys") == true)
  }

  @Test func connectingToNothingFailsWithinTheConnectTimeout() throws {
    let port = try freePort()
    let error = #expect(throws: StoreError.self) {
      try RedisStore(
        url: RedisURL(host: "127.0.0.1", port: port), prefix: "kaitian/x/",
        connectTimeout: .milliseconds(300))
    }
    #expect(error?.code == .connectionFailed)
    #expect(error?.description.contains("Redis at 127.0.0.1:\(port)") == true)
  }

  @Test func badKeysAreRejected() throws {
    let server = try RedisServer()
    let store = try store(server)
    #expect(throws: StoreError.self) { try store.set(key: "", value: [1]) }
    let long = String(repeating: "k", count: 5000)
    let error = #expect(throws: StoreError.self) { try store.set(key: long, value: [1]) }
    #expect(error?.code == .invalidArgument)
    let small = try RedisStore(
      url: server.url, prefix: "kaitian/small/", limits: RESPLimits(maxBulkLength: 8))
    let large = #expect(throws: StoreError.self) {
      try small.set(key: "k", value: [UInt8](repeating: 0, count: 9))
    }
    #expect(large?.code == .valueTooLarge)
    try small.set(key: "k", value: [UInt8](repeating: 0, count: 8))
    #expect(try small.tryGet(key: "k")?.count == 8)
  }
}
