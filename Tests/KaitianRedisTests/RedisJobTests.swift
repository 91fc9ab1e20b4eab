import ArgumentParser
import Glibc
import Kaitian
import KaitianAuth
import KaitianPOSIX
import KaitianRedis
import Synchronization
import Testing

@testable import KaitianCLI
@testable import KaitianLaunch

@Suite(
  "Redis as a job's store", .enabled(if: RedisServer.isInstalled, RedisServer.notInstalledReason),
  .serialized)
struct RedisJobTests {
  @Test func threeRanksRendezvousOverRedisAndAllReduce() throws {
    let server = try RedisServer()
    let token = try JobToken("redis-test-token-0123456789")
    let size = 3
    let count = 1000
    let outcomes = Mutex<[String?]>(Array(repeating: "did not run", count: size))
    let threads = try (0..<size).map { rank in
      try OSThread.spawn(name: "rank \(rank)") {
        do {
          // Each rank its own connection, as separate processes would have.
          let store = try RedisStore(
            url: server.url, prefix: RedisStore.prefix(jobID: "allreduce"),
            connectTimeout: .seconds(5))
          let options = CommunicatorOptions(
            hostIdentity: "host-\(rank)", timeoutSeconds: 30, advertisedHost: "127.0.0.1")
          let communicator = try Communicator(
            store: store, rank: rank, size: size, token: token, options: options)
          defer { communicator.destroy() }
          var values = [Float](repeating: Float(rank + 1), count: count)
          try values.withUnsafeMutableBytes { bytes in
            try communicator.allReduce(
              bytes.baseAddress!, into: bytes.baseAddress!, count: count, dataType: .float32,
              op: .sum
            ).wait()
          }
          let wrong = values.firstIndex { $0 != 6 }
          outcomes.withLock {
            $0[rank] = wrong.map { "element \($0) is \(values[$0]), expected 6" }
          }
        } catch {
          outcomes.withLock { $0[rank] = "\(error)" }
        }
      }
    }
    for thread in threads { thread.join() }
    #expect(outcomes.withLock { $0 } == [nil, nil, nil])
    // The rendezvous keys live under the job's prefix only.
    let look = try RedisStore(url: server.url, prefix: "kaitian/")
    let keys = try look.keys(prefix: "")
    #expect(!keys.isEmpty && keys.allSatisfy { $0.hasPrefix("allreduce/") }, "\(keys)")
  }

  @Test func kaitianRunWithRedisStoreEndToEnd() throws {
    let server = try RedisServer()
    let job = "e2e-\(UInt32.random(in: 0...UInt32.max))"
    // Each worker checks what it was given and writes a key the way any Redis client would,
    // without a TTL: the launcher's finish must give it one.
    let script = """
      test "$KAITIAN_STORE" = "\(server.address)" && test "$KAITIAN_JOB_ID" = "\(job)" \
      && /usr/bin/redis-cli -p \(server.port) SET "kaitian/$KAITIAN_JOB_ID/worker-$RANK" ok
      """
    let status = try run(
      builtProduct("kaitian"),
      [
        "run", "--log-dir", "\(server.directory)/logs", "--job-id", job, "--store",
        server.address, "--group", "cpu:2", "--", "/bin/sh", "-c", script,
      ])
    #expect(status == 0)
    let store = try RedisStore(url: server.url, prefix: RedisStore.prefix(jobID: job))
    #expect(try store.keys(prefix: "worker") == ["worker-0", "worker-1"])
    for key in ["worker-0", "worker-1"] {
      let left = try #require(try store.timeToLive(key: key), "\(key) has no TTL")
      #expect(left <= JobStore.finishedJobTTL && left > .seconds(3000), "\(key): \(left)")
    }
  }

  @Test func kaitianRunFailsClearlyWithoutRedis() throws {
    let port = try freePort()
    var template = Array("/tmp/kaitian-redis-run-XXXXXX".utf8CString)
    let directory = String(cString: mkdtemp(&template))
    defer { _ = try? run("/bin/rm", ["-rf", directory]) }
    let pid = try spawn(
      builtProduct("kaitian"),
      [
        "run", "--log-dir", "\(directory)/logs", "--store", "redis://127.0.0.1:\(port)",
        "--group", "cpu:1", "--", "/bin/true",
      ], stderrPath: "\(directory)/err")
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    #expect(status != 0)
    let errors = readFile("\(directory)/err")
    #expect(errors.contains("cannot connect to Redis at 127.0.0.1:\(port)"), "\(errors)")
  }

  @Test func storeOptionTakesOnlyRedisURLs() {
    func problem(_ store: String) -> String? {
      do {
        _ = try RunCommand.parse(["--store", store, "--group", "cpu:1", "--", "true"])
        return nil
      } catch {
        return RunCommand.message(for: error)
      }
    }
    #expect(problem("redis://127.0.0.1:6379/2") == nil)
    #expect(problem("127.0.0.1:29500")?.contains("--store takes a Redis URL") == true)
    #expect(problem("redis://:pw@h:port")?.contains("bad Redis URL") == true)
  }
}

/// A product built next to the test bundle.
func builtProduct(_ name: String) -> String {
  let test = currentExecutablePath()
  return String(test[..<(test.lastIndex(of: "/") ?? test.startIndex)]) + "/" + name
}

func readFile(_ path: String) -> String {
  String(decoding: (try? TextFile.read(path)) ?? [], as: UTF8.self)
}
