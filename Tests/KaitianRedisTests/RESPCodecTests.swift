import Glibc
import KaitianPOSIX
import KaitianRedis
import KaitianStore
import NIOCore
import Synchronization
import Testing

/// Parses `text` as one reply; nil when incomplete.
private func parse(_ text: String, limits: RESPLimits = .default) throws -> RESPValue? {
  var buffer = ByteBuffer(string: text)
  return try RESPDecoder.parse(&buffer, limits: limits)
}

@Suite struct RESPCodecTests {
  @Test func decodesEveryReplyType() throws {
    #expect(try parse("+OK\r\n") == .simple("OK"))
    #expect(try parse("-ERR no\r\n") == .error("ERR no"))
    #expect(try parse(":-42\r\n") == .integer(-42))
    #expect(try parse("$3\r\nabc\r\n") == .bulk(Array("abc".utf8)))
    #expect(try parse("$0\r\n\r\n") == .bulk([]))
    #expect(try parse("$-1\r\n") == .bulk(nil))
    #expect(try parse("*-1\r\n") == .array(nil))
    #expect(
      try parse("*2\r\n$1\r\na\r\n*1\r\n:1\r\n")
        == .array([.bulk(Array("a".utf8)), .array([.integer(1)])]))
  }

  @Test func consumesNothingUntilAReplyIsComplete() throws {
    let whole = "*2\r\n$5\r\nhello\r\n:7\r\n"
    for end in 0..<whole.utf8.count {
      var buffer = ByteBuffer(bytes: Array(whole.utf8.prefix(end)))
      #expect(try RESPDecoder.parse(&buffer, limits: .default) == nil, "prefix \(end)")
      #expect(buffer.readerIndex == 0)
    }
    var buffer = ByteBuffer(string: whole + "+next\r\n")
    #expect(try RESPDecoder.parse(&buffer, limits: .default) != nil)
    #expect(try RESPDecoder.parse(&buffer, limits: .default) == .simple("next"))
    #expect(buffer.readableBytes == 0)
  }

  @Test(arguments: [
    ("?what\r\n", "unknown reply type"),
    ("$99999999999\r\n", "RESPLimits.maxBulkLength"),
    ("$-5\r\n", "RESPLimits.maxBulkLength"),
    ("*2000000\r\n", "RESPLimits.maxArrayLength"),
    (String(repeating: "*1\r\n", count: 100) + ":1\r\n", "RESPLimits.maxDepth"),
    (":12x\r\n", "not a decimal integer"),
    (":99999999999999999999\r\n", "not a 64-bit integer"),
    (":9999999999999999999\r\n", "overflows"),
    ("$3\r\nabcde\r\n", "not followed by CRLF"),
    ("+OK\n", "bare LF"),
    ("+" + String(repeating: "x", count: 70_000), "RESPLimits.maxLineLength"),
  ])
  func rejectsGarbageWithAReason(input: String, reason: String) {
    let error = #expect(throws: RESPProtocolError.self) { _ = try parse(input) }
    #expect(error?.description.contains(reason) == true, "\(String(describing: error))")
  }

  @Test func randomBytesNeverCrashTheDecoder() {
    var generator = SystemRandomNumberGenerator()
    let alphabet = Array("+-:$*\r\n0123456789-ab".utf8)
    for _ in 0..<20_000 {
      let count = Int.random(in: 0..<48, using: &generator)
      var buffer = ByteBuffer(
        bytes: (0..<count).map { _ in alphabet.randomElement(using: &generator)! })
      _ = try? RESPDecoder.parse(&buffer, limits: RESPLimits(maxBulkLength: 16, maxDepth: 3))
    }
  }

  @Test func encodesCommandsAsArraysOfBulkStrings() {
    var buffer = ByteBuffer()
    RESPEncoder().encode(data: RESPCommand("SET", "k", ""), out: &buffer)
    #expect(
      buffer.readString(length: buffer.readableBytes) == "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n")
  }
}

/// A TCP server that answers whatever it is sent with `reply`, then stays quiet.
private final class FakeRedis: Sendable {
  let port: UInt16
  private let listener: TCPSocket
  private let thread: OSThread

  init(reply: [UInt8]) throws {
    let listener = try TCPSocket.listen(host: "127.0.0.1", port: 0)
    self.listener = listener
    port = listener.localPort
    thread = try OSThread.spawn(name: "fake redis") {
      guard let client = try? listener.accept(deadline: .after(.seconds(10))) else { return }
      _ = try? client.readExactly(1, deadline: .after(.seconds(10)))
      try? client.writeAll(reply, deadline: .after(.seconds(10)))
      // Held open so that the client's error comes from the bytes, not from a close.
      _ = try? client.readExactly(1 << 20, deadline: .after(.seconds(3)))
    }
  }

  func join() {
    listener.shutdown()
    thread.join()
  }
}

@Suite struct RedisProtocolErrorTests {
  @Test(arguments: [
    ("garbage", "hello world\r\n"),
    ("oversized bulk", "$99999999999\r\n"),
    ("oversized array", "*99999999\r\n"),
    ("deep nesting", String(repeating: "*1\r\n", count: 10_000)),
    ("not PONG", "+HELLO\r\n"),
  ])
  func aServerThatIsNotRedisGivesAClearError(name: String, reply: String) throws {
    let fake = try FakeRedis(reply: Array(reply.utf8))
    defer { fake.join() }
    let error = #expect(throws: StoreError.self) {
      try RedisStore(
        url: RedisURL(host: "127.0.0.1", port: fake.port), prefix: "kaitian/x/",
        connectTimeout: .seconds(5), operationTimeout: .seconds(5))
    }
    #expect(error?.code == .protocolViolation, "\(name)")
    let description = error?.description ?? ""
    #expect(description.contains("Redis at 127.0.0.1:\(fake.port)"), "\(description)")
    #expect(description.contains("PING"), "names the command: \(description)")
  }

  @Test func aServerThatNeverAnswersTimesOut() throws {
    let fake = try FakeRedis(reply: [])
    defer { fake.join() }
    let error = #expect(throws: StoreError.self) {
      try RedisStore(
        url: RedisURL(host: "127.0.0.1", port: fake.port), prefix: "kaitian/x/",
        connectTimeout: .seconds(5), operationTimeout: .milliseconds(300))
    }
    #expect(error?.code == .connectionLost)
    #expect(error?.description.contains("did not answer PING within 300 ms") == true)
  }
}

@Suite struct StoreAddressTests {
  @Test func redisURLs() throws {
    #expect(try RedisURL(parsing: "redis://h") == RedisURL(host: "h"))
    #expect(
      try RedisURL(parsing: "redis://h:7000/3") == RedisURL(host: "h", port: 7000, database: 3))
    #expect(
      try RedisURL(parsing: "redis://:p@w@h:1")
        == RedisURL(host: "h", port: 1, password: "p@w"))
    #expect(
      try RedisURL(parsing: "redis://u:p@[::1]:6380")
        == RedisURL(host: "::1", port: 6380, user: "u", password: "p"))
    #expect(try RedisURL(parsing: "redis://:secret@h").description == "redis://:***@h:6379")
    for bad in ["http://h", "redis://", "redis://h:99999", "redis://h/x", "redis://:secret@h:x"] {
      let error = #expect(throws: StoreError.self, "\(bad)") { try RedisURL(parsing: bad) }
      #expect(error?.code == .invalidArgument)
      #expect(error?.description.contains("secret") == false)
    }
  }

  @Test func locatorTellsTheStoresApart() throws {
    #expect(try StoreLocator.parse("10.0.0.1:29500") == .embedded("10.0.0.1:29500"))
    #expect(try StoreLocator.parse("redis://h:1") == .redis(RedisURL(host: "h", port: 1)))
    #expect(throws: StoreError.self) { try StoreLocator.parse("etcd://h:1") }
    #expect(throws: StoreError.self) { try StoreLocator.parse("nohost") }
    let error = #expect(throws: StoreError.self) {
      try StoreLocator.connect(
        .redis(RedisURL(host: "h")), token: nil, jobID: nil, connectTimeout: .seconds(1))
    }
    #expect(error?.description.contains("KAITIAN_JOB_ID") == true)
  }

  @Test(.enabled(if: RedisServer.isInstalled, RedisServer.notInstalledReason))
  func locatorConnectsToRedisUnderTheJobPrefix() throws {
    let server = try RedisServer()
    let store = try StoreLocator.connect(
      StoreLocator.parse(server.address), token: nil, jobID: "located",
      connectTimeout: .seconds(5))
    try store.set(key: "k", value: [1])
    let direct = try RedisStore(url: server.url, prefix: "kaitian/located/")
    #expect(try direct.tryGet(key: "k") == [1])
  }
}
