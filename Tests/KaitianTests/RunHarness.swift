import Glibc

/// The built `kaitian` tool run as a child process for the tests, its stdout and stderr
/// captured in files.
final class KaitianProcess {
  let pid: pid_t
  private let directory: String
  private var exitCode: Int32?

  init(_ arguments: [String], workingDirectory: String? = nil) throws {
    var template = Array("/tmp/kaitian-run-test-XXXXXX".utf8CString)
    directory = String(cString: mkdtemp(&template))
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(
      &actions, 1, "\(directory)/out", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_addopen(
      &actions, 2, "\(directory)/err", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    // Logs go to the test's own directory, not to the working directory of the test run.
    let argv =
      ([Self.toolPath(), "run", "--log-dir", "\(directory)/logs"] + arguments).map { strdup($0) }
      + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, Self.toolPath(), &actions, nil, argv, environ)
    guard result == 0 else {
      throw SpawnError(description: "cannot start kaitian: \(String(cString: strerror(result)))")
    }
    self.pid = pid
  }

  deinit {
    if exitCode == nil {
      kill(pid, SIGKILL)
      var status: Int32 = 0
      waitpid(pid, &status, 0)
    }
  }

  var output: String { Self.read("\(directory)/out") }
  var errors: String { Self.read("\(directory)/err") }
  func log(rank: Int) -> String { Self.read("\(directory)/logs/rank-\(rank).log") }

  /// The exit status (128 + signal when killed), or nil if still running after `seconds`.
  func wait(seconds: Double) -> Int32? {
    let end = ProcessJob.now() + seconds
    while exitCode == nil && ProcessJob.now() < end {
      var status: Int32 = 0
      if waitpid(pid, &status, WNOHANG) == pid {
        let signal = status & 0x7f
        exitCode = signal == 0 ? (status >> 8) & 0xff : 128 + signal
      } else {
        usleep(10_000)
      }
    }
    return exitCode
  }

  /// Waits until stdout has `count` lines containing `text`.
  func waitForOutput(_ text: String, count: Int, seconds: Double) -> Bool {
    let end = ProcessJob.now() + seconds
    while ProcessJob.now() < end {
      if output.split(separator: "\n").filter({ $0.contains(text) }).count >= count { return true }
      usleep(20_000)
    }
    return false
  }

  /// `pgrep -f PATTERN` finds nothing.
  static func noProcessMatches(_ pattern: String) -> Bool {
    var pid: pid_t = 0
    let words: [String] = ["/usr/bin/pgrep", "-f", pattern]
    let argv = words.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    guard posix_spawn(&pid, "/usr/bin/pgrep", nil, nil, argv, environ) == 0 else { return false }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return (status >> 8) & 0xff == 1
  }

  /// kaitian is built next to the test bundle, as KaitianTestWorker is.
  private static func toolPath() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    var path = String(cString: buffer)
    if length > 0, let slash = path.lastIndex(of: "/") { path = String(path[..<slash]) }
    return path + "/kaitian"
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
