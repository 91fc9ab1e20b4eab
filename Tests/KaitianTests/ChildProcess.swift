import Glibc
import KaitianPOSIX

@testable import KaitianLaunch

/// A program of this package started by a test, with stdout and stderr captured in files.
///
/// Why files and not pipes: a test may read the output while the child still runs and after it
/// ends, and a child that writes a lot can never block on a full pipe.
final class ChildProcess {
  let pid: pid_t
  let directory: String
  private var exitCode: Int32?

  /// Starts `program` (a product built next to the test bundle, or an absolute path).
  /// `environment` nil inherits the test's environment.
  init(_ program: String, _ arguments: [String], environment: [String: String]? = nil) throws {
    let path = program.hasPrefix("/") ? program : Self.builtProduct(program)
    var template = Array("/tmp/kaitian-test-XXXXXX".utf8CString)
    directory = String(cString: mkdtemp(&template))
    let spawn = ProcessSpawn(descriptors: [
      (0, .file("/dev/null", flags: O_RDONLY)),
      (1, .file("\(directory)/out", flags: O_WRONLY | O_CREAT | O_TRUNC)),
      (2, .file("\(directory)/err", flags: O_WRONLY | O_CREAT | O_TRUNC)),
    ])
    switch spawn.start(path, arguments: arguments, environment: environment) {
    case .success(let pid): self.pid = pid
    case .failure(let error): throw SpawnError(description: "\(error)")
    }
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

  func signal(_ number: Int32) { kill(pid, number) }

  /// The exit status (128 + signal when killed), or nil if still running after `seconds`.
  func wait(seconds: Double) -> Int32? {
    let end = Self.now() + seconds
    while exitCode == nil && Self.now() < end {
      if !poll() { usleep(10_000) }
    }
    return exitCode
  }

  /// Reaps the child if it has ended; returns whether it has.
  @discardableResult
  func poll() -> Bool {
    guard exitCode == nil else { return true }
    var status: Int32 = 0
    guard waitpid(pid, &status, WNOHANG) == pid else { return false }
    let signal = status & 0x7f
    exitCode = signal == 0 ? (status >> 8) & 0xff : 128 + signal
    return true
  }

  /// Waits until stdout has `count` lines containing `text`, at most `seconds`.
  func waitForOutput(_ text: String, count: Int = 1, seconds: Double) -> Bool {
    let end = Self.now() + seconds
    while Self.now() < end {
      if output.split(separator: "\n").filter({ $0.contains(text) }).count >= count { return true }
      usleep(20_000)
    }
    return false
  }

  static func now() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
  }

  /// Executables of this package are built next to the test bundle
  /// (.build/<config>/KaitianPackageTests.xctest, a file on Linux).
  static func builtProduct(_ name: String) -> String {
    let test = currentExecutablePath()
    return String(test[..<(test.lastIndex(of: "/") ?? test.startIndex)]) + "/" + name
  }

  static func read(_ path: String) -> String {
    String(decoding: (try? TextFile.read(path)) ?? [], as: UTF8.self)
  }
}

struct SpawnError: Error, CustomStringConvertible {
  let description: String
}
