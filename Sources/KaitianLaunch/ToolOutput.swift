import Glibc
import KaitianPOSIX

/// A tool's standard output, or why there is none: a tool that hangs (a driver in a bad state
/// makes nvidia-smi block) is killed after the timeout instead of hanging `kaitian devices`.
public enum ToolOutput {
  public struct Problem: Error, CustomStringConvertible {
    public let description: String
  }

  public static func run(_ path: String, arguments: [String], timeoutSeconds: Double) -> Result<
    String, Problem
  > {
    var ends: [Int32] = [-1, -1]
    guard retryingInterrupts({ pipe(&ends) }).errno == nil else {
      return .failure(Problem(description: "cannot create a pipe"))
    }
    let spawn = ProcessSpawn(
      descriptors: [
        (1, .descriptor(ends[1])), (2, .file("/dev/null", flags: O_WRONLY)),
        (0, .file("/dev/null", flags: O_RDONLY)),
      ],
      closing: [ends[0]])
    let spawned = spawn.start(path, arguments: arguments)
    close(ends[1])
    defer { close(ends[0]) }
    let pid: pid_t
    switch spawned {
    case .success(let started): pid = started
    case .failure(let error):
      return .failure(
        Problem(description: "cannot start: \(errnoText(error.code))"))
    }
    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65_536)
    let deadline = LocalProcessGroup.now() + timeoutSeconds
    var timedOut = false
    while true {
      let left = deadline - LocalProcessGroup.now()
      guard left > 0 else {
        timedOut = true
        break
      }
      var fd = pollfd(fd: ends[0], events: Int16(POLLIN), revents: 0)
      // An interrupted poll loops back, which recomputes the time left.
      guard poll(&fd, 1, Int32(left * 1000) + 1) > 0 else { continue }
      let (count, _) = retryingInterrupts { read(ends[0], &buffer, buffer.count) }
      guard count > 0 else { break }
      output += buffer[0..<count]
    }
    if timedOut { kill(pid, SIGKILL) }
    var status: Int32 = 0
    _ = retryingInterrupts { waitpid(pid, &status, 0) }
    if timedOut {
      return .failure(Problem(description: "no answer within \(Int(timeoutSeconds)) s"))
    }
    guard status == 0 else {
      let signal = status & 0x7f
      return .failure(
        Problem(
          description: signal == 0
            ? "exited with status \((status >> 8) & 0xff)" : "killed by signal \(signal)"))
    }
    return .success(String(decoding: output, as: UTF8.self))
  }
}
