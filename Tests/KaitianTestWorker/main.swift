import Glibc
import Kaitian
import KaitianAuth
import KaitianStore
import KaitianVerification

/// A rank started as a process by the tests. Reads RANK, WORLD_SIZE, KAITIAN_TEST_STORE and
/// KAITIAN_TOKEN; the first argument picks what it does:
///   matrix: every collective x dtype x op against the reference, then exit 0;
///   loop SECONDS: allreduce 1 MiB again and again (prints "ready" once joined), exit 0 when
///     the time is up; on an error print it and exit 3.
/// Any failure prints "error: <message>" on stderr.
func environment(_ name: String) -> String? {
  getenv(name).map { String(cString: $0) }
}

func fail(_ message: String, code: Int32) -> Never {
  let line = Array("error: \(message)\n".utf8)
  _ = write(2, line, line.count)
  exit(code)
}

guard let mode = CommandLine.arguments.dropFirst().first,
  let rank = environment("RANK").flatMap(Int.init),
  let size = environment("WORLD_SIZE").flatMap(Int.init),
  let address = environment("KAITIAN_TEST_STORE")
else {
  fail(
    "usage: RANK=r WORLD_SIZE=n KAITIAN_TEST_STORE=host:port kaitian-test-worker matrix|loop S",
    code: 2)
}

do {
  let token = try JobToken.requiredFromEnvironment()
  let store = try StoreClient.connect(address: address, token: token, clientName: "rank \(rank)")
  var options = try CommunicatorOptions.fromEnvironment()
  options.ringThresholdBytes = 1024
  options.sharedMemoryRingBytes = 64 * 1024
  let comm = try Communicator(store: store, rank: rank, size: size, token: token, options: options)
  defer { comm.destroy() }
  switch mode {
  case "matrix":
    let checks = CollectiveChecks(comm: comm)
    try checks.reductionMatrix(counts: [0, 1, 7, 31, 1031])
    try checks.dataMovementMatrix(counts: [0, 1, 7, 31, 1031])
    try checks.largeMessages()
  case "loop":
    let seconds = Double(CommandLine.arguments.dropFirst(2).first ?? "60") ?? 60
    let count = 1 << 18
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: count * 4, alignment: 64)
    defer { buffer.deallocate() }
    memset(buffer, 0, count * 4)
    print("ready")
    fflush(nil)
    var clock = timespec()
    clock_gettime(CLOCK_MONOTONIC, &clock)
    let end = Double(clock.tv_sec) + seconds
    repeat {
      do {
        try comm.allReduce(buffer, into: buffer, count: count, dataType: .float32, op: .sum).wait()
      } catch {
        fail("\(error)", code: 3)
      }
      clock_gettime(CLOCK_MONOTONIC, &clock)
    } while Double(clock.tv_sec) < end
  default:
    fail("unknown mode \(mode)", code: 2)
  }
} catch {
  fail("\(error)", code: 1)
}
