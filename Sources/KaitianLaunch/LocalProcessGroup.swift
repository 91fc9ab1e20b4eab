import Glibc

/// Starts local processes and supervises them as one job: when one fails, the others are
/// stopped (SIGTERM, then SIGKILL after a grace period), as torchrun does.
public struct LocalProcessGroup {
  public struct Member: Sendable {
    public var name: String
    public var arguments: [String]
    public var environment: [String: String]

    public init(name: String, arguments: [String], environment: [String: String]) {
      self.name = name
      self.arguments = arguments
      self.environment = environment
    }
  }

  /// How a member ended.
  public enum Exit: Equatable, Sendable, CustomStringConvertible {
    case status(Int32)
    case signal(Int32)

    public var succeeded: Bool { self == .status(0) }

    public var description: String {
      switch self {
      case .status(let code): "exited with status \(code)"
      case .signal(let number):
        "was killed by signal \(number) (\(String(cString: strsignal(number))))"
      }
    }
  }

  public struct Failure: Error, CustomStringConvertible {
    public let member: String
    public let exit: Exit
    public var description: String { "\(member) \(exit)" }
  }

  public let executable: String
  public var graceSeconds = 3.0

  public init(executable: String, graceSeconds: Double = 3.0) {
    self.executable = executable
    self.graceSeconds = graceSeconds
  }

  /// Runs every member to completion. Returns each member's exit; the first failure, if any,
  /// is reported by `firstFailure`.
  public func run(_ members: [Member]) throws -> (exits: [Exit?], firstFailure: Failure?) {
    var pids: [pid_t] = []
    for member in members {
      pids.append(try spawn(member))
    }
    var exits: [Exit?] = Array(repeating: nil, count: members.count)
    var firstFailure: Failure?
    var stopRequested: Double?
    while exits.contains(where: { $0 == nil }) {
      var status: Int32 = 0
      let pid = waitpid(-1, &status, WNOHANG)
      if pid > 0, let index = pids.firstIndex(of: pid) {
        let exit = Self.decode(status)
        exits[index] = exit
        if !exit.succeeded && firstFailure == nil {
          firstFailure = Failure(member: members[index].name, exit: exit)
          stopRequested = Self.now()
          for (other, otherPid) in pids.enumerated() where exits[other] == nil {
            kill(otherPid, SIGTERM)
          }
        }
        continue
      }
      if let started = stopRequested, Self.now() - started > graceSeconds {
        for (other, otherPid) in pids.enumerated() where exits[other] == nil {
          kill(otherPid, SIGKILL)
        }
      }
      usleep(20_000)
    }
    return (exits, firstFailure)
  }

  private func spawn(_ member: Member) throws -> pid_t {
    var environment = Self.currentEnvironment()
    for (key, value) in member.environment { environment[key] = value }
    let argv = ([executable] + member.arguments).map { strdup($0) } + [nil]
    let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer {
      argv.forEach { free($0) }
      envp.forEach { free($0) }
    }
    var pid: pid_t = 0
    let result = posix_spawn(&pid, executable, nil, nil, argv, envp)
    guard result == 0 else {
      throw LaunchError("cannot start \(member.name) (\(executable)): \(String(cString: strerror(result)))")
    }
    return pid
  }

  private static func decode(_ status: Int32) -> Exit {
    // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift cannot import.
    let signal = status & 0x7f
    return signal == 0 ? .status((status >> 8) & 0xff) : .signal(signal)
  }

  private static func now() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
  }

  private static func currentEnvironment() -> [String: String] {
    var result: [String: String] = [:]
    var cursor = environ
    while let entry = cursor.pointee {
      let text = String(cString: entry)
      if let separator = text.firstIndex(of: "=") {
        result[String(text[..<separator])] = String(text[text.index(after: separator)...])
      }
      cursor += 1
    }
    return result
  }
}

public struct LaunchError: Error, CustomStringConvertible {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// The path of the running executable, so a launcher can start copies of itself.
public func currentExecutablePath() -> String {
  var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
  let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
  return length > 0 ? String(cString: buffer) : CommandLine.arguments[0]
}
