import Glibc
import KaitianStore

/// Ranks started as separate processes of kaitian-test-worker for the tests, with an embedded
/// store, each rank's output captured in files.
final class ProcessJob {
  let size: Int
  private(set) var pids: [pid_t] = []
  private let server: StoreServer
  private let directory: String
  private var exits: [Int32?]

  /// `environment(rank)` adds variables per rank (KAITIAN_HOST_ID, KAITIAN_TRANSPORT, ...).
  init(
    size: Int, arguments: [String], timeoutSeconds: Double = 20,
    environment: (Int) -> [String: String] = { _ in [:] }
  ) throws {
    self.size = size
    exits = Array(repeating: nil, count: size)
    let token = JobToken.generate()
    server = StoreServer(host: "127.0.0.1", port: 0, token: token)
    let port = try server.start()
    var template = Array("/tmp/kaitian-test-XXXXXX".utf8CString)
    directory = String(cString: mkdtemp(&template))
    let worker = Self.workerPath()
    for rank in 0..<size {
      var variables = [
        "RANK": "\(rank)", "WORLD_SIZE": "\(size)", "KAITIAN_TEST_STORE": "127.0.0.1:\(port)",
        "KAITIAN_TOKEN": token.stringValue, "KAITIAN_TIMEOUT": "\(timeoutSeconds)",
        "PATH": "/usr/bin:/bin",
      ]
      variables.merge(environment(rank)) { $1 }
      pids.append(
        try Self.spawn(
          worker, arguments: arguments, environment: variables,
          stdout: "\(directory)/\(rank).out", stderr: "\(directory)/\(rank).err"))
    }
  }

  deinit {
    for (rank, pid) in pids.enumerated() where exits[rank] == nil {
      kill(pid, SIGKILL)
      var status: Int32 = 0
      waitpid(pid, &status, 0)
    }
    server.stop()
  }

  func output(_ rank: Int) -> String { Self.read("\(directory)/\(rank).out") }
  func errors(_ rank: Int) -> String { Self.read("\(directory)/\(rank).err") }

  /// Waits until every rank in `ranks` printed a line containing `text`, or `seconds` pass.
  func waitForOutput(_ text: String, ranks: [Int], seconds: Double) -> Bool {
    let end = Self.now() + seconds
    while Self.now() < end {
      if ranks.allSatisfy({ output($0).contains(text) }) { return true }
      usleep(20_000)
    }
    return false
  }

  func signal(_ rank: Int, _ number: Int32) { kill(pids[rank], number) }

  /// Waits for `ranks` to exit, at most `seconds`; returns each one's exit status (the signal
  /// number + 128 when killed), or nil for a rank still running.
  func wait(for ranks: [Int], seconds: Double) -> [Int32?] {
    let end = Self.now() + seconds
    while Self.now() < end && ranks.contains(where: { exits[$0] == nil }) {
      for rank in ranks where exits[rank] == nil {
        var status: Int32 = 0
        if waitpid(pids[rank], &status, WNOHANG) == pids[rank] {
          let signal = status & 0x7f
          exits[rank] = signal == 0 ? (status >> 8) & 0xff : 128 + signal
        }
      }
      usleep(10_000)
    }
    return ranks.map { exits[$0] }
  }

  static func now() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
  }

  /// kaitian-test-worker is built next to the test bundle.
  private static func workerPath() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    var path = String(cString: buffer)
    if length > 0, let slash = path.lastIndex(of: "/") { path = String(path[..<slash]) }
    // The test binary lives in .build/<config>/<Package>PackageTests.xctest (a file on Linux).
    return path + "/KaitianTestWorker"
  }

  private static func spawn(
    _ path: String, arguments: [String], environment: [String: String], stdout: String,
    stderr: String
  ) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, stdout, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    let argv = ([path] + arguments).map { strdup($0) } + [nil]
    let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
      argv.forEach { free($0) }
      envp.forEach { free($0) }
    }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, path, &actions, nil, argv, envp)
    guard result == 0 else {
      throw SpawnError(description: "cannot start \(path): \(String(cString: strerror(result)))")
    }
    return pid
  }

  private static func read(_ path: String) -> String {
    guard let file = fopen(path, "r") else { return "" }
    defer { fclose(file) }
    var result: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
      let n = fread(&buffer, 1, buffer.count, file)
      if n <= 0 { break }
      result += buffer[0..<n]
    }
    return String(decoding: result, as: UTF8.self)
  }
}

struct SpawnError: Error, CustomStringConvertible {
  let description: String
}
