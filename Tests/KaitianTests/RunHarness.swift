import Glibc

/// The built `kaitian` tool's `run` command as a child process for the tests.
final class KaitianProcess {
  private let child: ChildProcess
  private let logs: String

  init(_ arguments: [String]) throws {
    var template = Array("/tmp/kaitian-run-logs-XXXXXX".utf8CString)
    let logs = String(cString: mkdtemp(&template))
    // Logs go to a directory of the test's own, not to the working directory of the test run.
    self.logs = logs
    child = try ChildProcess("kaitian", ["run", "--log-dir", logs] + arguments)
  }

  var pid: pid_t { child.pid }
  var output: String { child.output }
  var errors: String { child.errors }
  func logPath(rank: Int) -> String { "\(logs)/rank-\(rank).log" }
  func log(rank: Int) -> String { ChildProcess.read(logPath(rank: rank)) }
  func wait(seconds: Double) -> Int32? { child.wait(seconds: seconds) }
  func waitForOutput(_ text: String, count: Int, seconds: Double) -> Bool {
    child.waitForOutput(text, count: count, seconds: seconds)
  }

  /// `pgrep -f PATTERN` finds nothing.
  static func noProcessMatches(_ pattern: String) -> Bool {
    guard let pgrep = try? ChildProcess("/usr/bin/pgrep", ["-f", pattern]) else { return false }
    return pgrep.wait(seconds: 10) == 1
  }
}
