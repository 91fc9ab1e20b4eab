import Glibc
import KaitianPOSIX

/// Starts local processes and supervises them as one job: when one fails, the others are
/// stopped (SIGTERM, then SIGKILL after a grace period), as torchrun does.
///
/// Unlike torchrun, the others first get `failureSettleSeconds` to end by themselves. A
/// Kaitian rank notices a lost peer within milliseconds and writes which rank it lost before
/// it exits; a SIGTERM sent at once races that line, and a survivor's log that just stops
/// leaves the user guessing. Members that do not end by themselves (busy outside a
/// collective, or on another library) are stopped at the end of the window as before.
///
/// Every member runs in its own process group, so a terminal's Ctrl-C reaches only the
/// supervisor: it forwards SIGTERM to each group on SIGINT or SIGTERM, and killing a group
/// also ends whatever the member started itself (a shell's children, a data loader's workers).
/// Members read standard input from /dev/null: a process outside the terminal's foreground
/// group that reads the terminal would be stopped.
///
/// One `run` at a time per process: it installs process-wide handlers for SIGINT, SIGTERM
/// and SIGPIPE while it runs and restores the previous ones afterwards.
public struct LocalProcessGroup {
  public struct Member: Sendable {
    public var name: String
    /// The program to start; nil means the group's `executable`. Looked up in PATH when it has
    /// no slash.
    public var executable: String?
    public var arguments: [String]
    public var environment: [String: String]
    /// Where the member's output goes; nil: straight to this process's stdout and stderr.
    public var output: CapturedOutput?

    public init(
      name: String, executable: String? = nil, arguments: [String],
      environment: [String: String], output: CapturedOutput? = nil
    ) {
      self.name = name
      self.executable = executable
      self.arguments = arguments
      self.environment = environment
      self.output = output
    }
  }

  /// Output read through pipes: each line of the member's stdout (stderr) is written to this
  /// process's stdout (stderr) after `prefix`, and both streams are appended to `logPath`
  /// without the prefix.
  public struct CapturedOutput: Sendable {
    public var prefix: String
    public var logPath: String

    public init(prefix: String, logPath: String) {
      self.prefix = prefix
      self.logPath = logPath
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
      case .signal(let number): "was killed by signal \(number) (\(signalName(number)))"
      }
    }
  }

  /// A member's exit with its wall-clock and CPU time (user + system, including the children
  /// it waited for).
  public struct Ending: Sendable {
    public let exit: Exit
    public let seconds: Double
    public let cpuSeconds: Double
  }

  public struct Failure: Error, CustomStringConvertible {
    public let member: String
    public let index: Int
    public let exit: Exit
    public var description: String { "\(member) \(exit)" }
  }

  /// What the supervisor reports while it runs, for a launcher's progress lines.
  public enum Event: Sendable {
    case started(member: Int, pid: pid_t)
    case ended(member: Int, Ending)
    /// A signal asked the job to stop: SIGTERM went to every member still running.
    case interrupted(signal: Int32)
  }

  public struct Outcome: Sendable {
    /// One per member; nil only for members that were never started.
    public var endings: [Ending?]
    /// The first member that did not exit with status 0 on its own (not counting members
    /// stopped because of an earlier failure or an interruption).
    public var firstFailure: Failure?
    /// The SIGINT or SIGTERM that stopped the job, if one did.
    public var interruption: Int32?
    /// Whether `stopRequest` stopped the job.
    public var stoppedOnRequest = false
  }

  public var executable: String?
  public var graceSeconds = 3.0
  /// Seconds the others get to end by themselves after a member fails, before SIGTERM.
  public var failureSettleSeconds = 1.0
  /// The `kaitian` executable: when set, every member runs under its `LaunchGuard`, so members
  /// end even when this process is killed with SIGKILL.
  public var guardExecutable: String?
  public var onEvent: (Event) -> Void = { _ in }
  /// Asked on every turn of the supervision loop (about every 20 ms): returning true stops
  /// the members as an interruption does, for a reason outside this host (a multi-host
  /// launcher whose other host failed). Keep it cheap: read a flag another thread sets.
  public var stopRequest: () -> Bool = { false }

  public init(executable: String? = nil, graceSeconds: Double = 3.0) {
    self.executable = executable
    self.graceSeconds = graceSeconds
  }

  /// Runs every member to completion, or until one fails or a signal arrives; then stops the
  /// rest. Throws only when a member cannot be started (the ones already started are stopped).
  public func run(_ members: [Member]) throws(LaunchError) -> Outcome {
    let interrupts = try InterruptPipe.install()
    defer { interrupts.uninstall() }
    let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
    defer { close(devNull) }
    // The lifeline of every member's guard: this process holds the only write end.
    var lifeline: [Int32] = [-1, -1]
    if guardExecutable != nil && !makePipe(&lifeline, nonBlocking: false) {
      throw LaunchError("cannot create the members' lifeline pipe: \(errnoText(errno))")
    }
    defer { lifeline.filter { $0 >= 0 }.forEach { close($0) } }

    var running: [Running] = []
    defer { running.indices.forEach { running[$0].closeAll() } }
    for (index, member) in members.enumerated() {
      do {
        running.append(try spawn(member, stdin: devNull, lifeline: lifeline[0]))
        onEvent(.started(member: index, pid: running[index].pid))
      } catch {
        for started in running { kill(-started.pid, SIGKILL) }
        for started in running { _ = started.reap(blocking: true) }
        throw error
      }
    }

    var outcome = Outcome(
      endings: Array(repeating: nil, count: members.count), firstFailure: nil, interruption: nil)
    var stopRequested: Double?
    /// When a member failed and the others have until `failureSettleSeconds` to end.
    var settlingSince: Double?
    var killed = false
    let stopRemaining = { (signal: Int32) in
      for (index, member) in running.enumerated() where outcome.endings[index] == nil {
        kill(-member.pid, signal)
      }
    }
    while outcome.endings.contains(where: { $0 == nil }) {
      if let signal = pump(&running, interrupts: interrupts, timeoutMilliseconds: 20) {
        if outcome.interruption == nil && outcome.firstFailure == nil {
          outcome.interruption = signal
          onEvent(.interrupted(signal: signal))
          stopRequested = Self.now()
          stopRemaining(SIGTERM)
        } else if stopRequested == nil {
          // Ctrl-C while the others settle after a failure: stop them now.
          stopRequested = Self.now()
          stopRemaining(SIGTERM)
        } else if !killed {
          // A second Ctrl-C means "now": skip the rest of the grace period.
          stopRemaining(SIGKILL)
          killed = true
        }
      }
      if stopRequested == nil && settlingSince == nil && stopRequest() {
        outcome.stoppedOnRequest = true
        stopRequested = Self.now()
        stopRemaining(SIGTERM)
      }
      for index in running.indices where outcome.endings[index] == nil {
        guard let ending = running[index].reap(blocking: false) else { continue }
        outcome.endings[index] = ending
        // Whatever the member left behind in its group goes with it.
        kill(-running[index].pid, SIGKILL)
        onEvent(.ended(member: index, ending))
        if !ending.exit.succeeded && stopRequested == nil && settlingSince == nil {
          outcome.firstFailure = Failure(
            member: members[index].name, index: index, exit: ending.exit)
          settlingSince = Self.now()
        }
      }
      if let failed = settlingSince, stopRequested == nil,
        Self.now() - failed >= failureSettleSeconds
      {
        stopRequested = Self.now()
        stopRemaining(SIGTERM)
      }
      if let started = stopRequested, !killed, Self.now() - started > graceSeconds {
        stopRemaining(SIGKILL)
        killed = true
      }
    }
    // The last lines written before each exit are still in the pipes.
    let drainEnd = Self.now() + 1
    while running.contains(where: \.hasOpenOutput) && Self.now() < drainEnd {
      _ = pump(&running, interrupts: nil, timeoutMilliseconds: 20)
    }
    running.indices.forEach { running[$0].flushPartialLines() }
    return outcome
  }

  /// Copies whatever output is ready (waiting at most `timeoutMilliseconds`); returns a signal
  /// number when SIGINT or SIGTERM arrived.
  private func pump(
    _ running: inout [Running], interrupts: InterruptPipe?, timeoutMilliseconds: Int32
  ) -> Int32? {
    var fds: [pollfd] = []
    var owners: [(member: Int, stream: Int)] = []
    if let interrupts {
      fds.append(pollfd(fd: interrupts.readEnd, events: Int16(POLLIN), revents: 0))
      owners.append((-1, -1))
    }
    for (index, member) in running.enumerated() {
      for (stream, pipe) in member.pipes.enumerated() where pipe.fd >= 0 {
        fds.append(pollfd(fd: pipe.fd, events: Int16(POLLIN), revents: 0))
        owners.append((index, stream))
      }
    }
    // Not retried on EINTR: a signal (SIGCHLD) ends the wait early, and the caller reaps.
    guard poll(&fds, nfds_t(fds.count), timeoutMilliseconds) > 0 else { return nil }
    var signal: Int32?
    for (slot, fd) in fds.enumerated() where fd.revents != 0 {
      let owner = owners[slot]
      if owner.member < 0 {
        signal = interrupts?.take()
      } else {
        running[owner.member].readAvailable(stream: owner.stream)
      }
    }
    return signal
  }

  private func spawn(_ member: Member, stdin: Int32, lifeline: Int32) throws(LaunchError)
    -> Running
  {
    guard var program = member.executable ?? executable else {
      preconditionFailure("\(member.name): no executable for the member or the group")
    }
    var arguments = member.arguments
    if let guardExecutable {
      arguments = Array(
        LaunchGuard.commandLine(
          executable: guardExecutable, graceSeconds: graceSeconds, command: [program] + arguments
        ).dropFirst())
      program = guardExecutable
    }
    var environment = Self.currentEnvironment()
    for (key, value) in member.environment { environment[key] = value }

    var spawn = ProcessSpawn(descriptors: [(0, .descriptor(stdin))], ownProcessGroup: true)
    if guardExecutable != nil {
      spawn.descriptors.append((LaunchGuard.lifelineDescriptor, .descriptor(lifeline)))
    }
    var running = Running(pid: 0, started: Self.now(), output: member.output)
    if let output = member.output {
      // Only the job's owner may read a rank's log (it can hold data and paths), and a link
      // placed where the log goes is not followed.
      running.log = open(
        output.logPath, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
      guard running.log >= 0 else {
        throw LaunchError("cannot write the log \(output.logPath): \(errnoText(errno))")
      }
      for stream in 0..<2 {
        var ends: [Int32] = [-1, -1]
        guard makePipe(&ends, nonBlocking: false) else {
          running.closeAll()
          throw LaunchError("cannot create a pipe for \(member.name): \(errnoText(errno))")
        }
        running.pipes[stream].fd = ends[0]
        running.writeEnds.append(ends[1])
        spawn.descriptors.append((Int32(stream + 1), .descriptor(ends[1])))
      }
    }
    defer { running.closeWriteEnds() }
    switch spawn.start(program, arguments: arguments, environment: environment) {
    case .success(let pid): running.pid = pid
    case .failure(let error):
      running.closeAll()
      throw LaunchError(
        "cannot start \(member.name) (\(program)): \(errnoText(error.code))")
    }
    running.started = Self.now()
    return running
  }

  /// Seconds on the monotonic clock.
  public static func now() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
  }

  /// This process's environment as a dictionary.
  public static func currentEnvironment() -> [String: String] {
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

/// One started member: its pid, and for captured output its pipes and log file.
private struct Running {
  struct Pipe {
    var fd: Int32 = -1
    var pending: [UInt8] = []
  }

  /// Longest line kept whole; longer ones are written in pieces.
  static let maximumLine = 64 << 10

  var pid: pid_t
  var started: Double
  let output: LocalProcessGroup.CapturedOutput?
  var pipes = [Pipe(), Pipe()]
  var writeEnds: [Int32] = []
  var log: Int32 = -1

  init(pid: pid_t, started: Double, output: LocalProcessGroup.CapturedOutput?) {
    self.pid = pid
    self.started = started
    self.output = output
  }

  var hasOpenOutput: Bool { pipes.contains { $0.fd >= 0 } }

  /// The member's ending if it has exited; `blocking` waits for it.
  func reap(blocking: Bool) -> LocalProcessGroup.Ending? {
    var status: Int32 = 0
    var usage = rusage()
    let (result, _) = retryingInterrupts { wait4(pid, &status, blocking ? 0 : WNOHANG, &usage) }
    guard result == pid else { return nil }
    // WIFEXITED / WEXITSTATUS / WTERMSIG are macros Swift cannot import.
    let signal = status & 0x7f
    let exit: LocalProcessGroup.Exit = signal == 0 ? .status((status >> 8) & 0xff) : .signal(signal)
    let cpu = { (time: timeval) in Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
    return LocalProcessGroup.Ending(
      exit: exit, seconds: LocalProcessGroup.now() - started,
      cpuSeconds: cpu(usage.ru_utime) + cpu(usage.ru_stime))
  }

  mutating func readAvailable(stream: Int) {
    var buffer = [UInt8](repeating: 0, count: 65_536)
    let (count, error) = retryingInterrupts { read(pipes[stream].fd, &buffer, buffer.count) }
    if error == EAGAIN { return }
    guard count > 0 else {
      close(pipes[stream].fd)
      pipes[stream].fd = -1
      flushPartialLine(stream: stream)
      return
    }
    var pending = pipes[stream].pending
    var lineStart = 0
    for index in 0..<count where buffer[index] == UInt8(ascii: "\n") {
      pending += buffer[lineStart...index]
      emit(pending, stream: stream)
      pending.removeAll(keepingCapacity: true)
      lineStart = index + 1
    }
    pending += buffer[lineStart..<count]
    pipes[stream].pending = pending
    if pending.count >= Self.maximumLine {
      flushPartialLine(stream: stream)
    }
  }

  mutating func flushPartialLines() {
    for stream in pipes.indices { flushPartialLine(stream: stream) }
  }

  private mutating func flushPartialLine(stream: Int) {
    guard !pipes[stream].pending.isEmpty else { return }
    emit(pipes[stream].pending + [UInt8(ascii: "\n")], stream: stream)
    pipes[stream].pending.removeAll()
  }

  /// Writes one line (ending in a newline) to the log and, prefixed, to this process's stream.
  /// Write errors are ignored: a closed terminal must not stop the job, and the log is the
  /// record that matters.
  private func emit(_ line: [UInt8], stream: Int) {
    guard let output else { return }
    _ = line.withUnsafeBytes { writeFully(log, $0) }
    _ = (Array(output.prefix.utf8) + line).withUnsafeBytes { writeFully(Int32(stream + 1), $0) }
  }

  mutating func closeWriteEnds() {
    writeEnds.forEach { close($0) }
    writeEnds = []
  }

  mutating func closeAll() {
    closeWriteEnds()
    for stream in pipes.indices where pipes[stream].fd >= 0 {
      close(pipes[stream].fd)
      pipes[stream].fd = -1
    }
    if log >= 0 {
      close(log)
      log = -1
    }
  }
}

/// SIGINT and SIGTERM turned into a byte on a pipe that the supervisor polls with the members'
/// output (the self-pipe trick): a handler may only do async-signal-safe things such as write.
private struct InterruptPipe {
  let readEnd: Int32
  private let writeEnd: Int32
  private let previous: [(Int32, sighandler_t?)]

  nonisolated(unsafe) private static var handlerWriteEnd: Int32 = -1

  static func install() throws(LaunchError) -> InterruptPipe {
    var ends: [Int32] = [-1, -1]
    guard makePipe(&ends, nonBlocking: true) else {
      throw LaunchError("cannot create the signal pipe: \(errnoText(errno))")
    }
    handlerWriteEnd = ends[1]
    let handler: @convention(c) (Int32) -> Void = { number in
      var byte = UInt8(truncatingIfNeeded: number)
      _ = write(InterruptPipe.handlerWriteEnd, &byte, 1)
    }
    // SIGPIPE ignored: a closed terminal shows up as a failed write, not as the supervisor's
    // death with its members left running.
    let previous = [
      (SIGINT, signal(SIGINT, handler)), (SIGTERM, signal(SIGTERM, handler)),
      (SIGPIPE, signal(SIGPIPE, SIG_IGN)),
    ]
    // A parent may have started this process with them blocked (test runners do).
    var interrupts = sigset_t()
    sigemptyset(&interrupts)
    sigaddset(&interrupts, SIGINT)
    sigaddset(&interrupts, SIGTERM)
    pthread_sigmask(SIG_UNBLOCK, &interrupts, nil)
    return InterruptPipe(readEnd: ends[0], writeEnd: ends[1], previous: previous)
  }

  /// The signal that arrived, if any.
  func take() -> Int32? {
    var byte: UInt8 = 0
    return read(readEnd, &byte, 1) == 1 ? Int32(byte) : nil
  }

  func uninstall() {
    for (number, handler) in previous { signal(number, handler) }
    close(readEnd)
    close(writeEnd)
  }
}

/// pipe2(O_CLOEXEC), which Swift's Glibc module does not declare: no end may leak into a
/// worker started later (its output pipe would then never reach end of file).
private func makePipe(_ ends: inout [Int32], nonBlocking: Bool) -> Bool {
  guard retryingInterrupts({ pipe(&ends) }).errno == nil else { return false }
  for fd in ends {
    _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    if nonBlocking { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
  }
  return true
}

public struct LaunchError: Error, CustomStringConvertible {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// SIGTERM for 15: the name users know, where strsignal gives "Terminated".
public func signalName(_ number: Int32) -> String {
  let names: [Int32: String] = [
    SIGHUP: "SIGHUP", SIGINT: "SIGINT", SIGQUIT: "SIGQUIT", SIGILL: "SIGILL", SIGTRAP: "SIGTRAP",
    SIGABRT: "SIGABRT", SIGBUS: "SIGBUS", SIGFPE: "SIGFPE", SIGKILL: "SIGKILL", SIGUSR1: "SIGUSR1",
    SIGSEGV: "SIGSEGV", SIGUSR2: "SIGUSR2", SIGPIPE: "SIGPIPE", SIGALRM: "SIGALRM",
    SIGTERM: "SIGTERM", SIGXCPU: "SIGXCPU", SIGSYS: "SIGSYS",
  ]
  return names[number] ?? "signal \(number)"
}

/// The path of the running executable, so a launcher can start copies of itself.
public func currentExecutablePath() -> String {
  var buffer = [UInt8](repeating: 0, count: Int(PATH_MAX))
  let length = readlink("/proc/self/exe", &buffer, buffer.count)
  return length > 0
    ? String(decoding: buffer[..<length], as: UTF8.self) : CommandLine.arguments[0]
}
