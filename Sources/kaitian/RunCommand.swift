import ArgumentParser
import Glibc
import KaitianLaunch
import KaitianStore

/// `kaitian run`: starts a job's workers on this host with their ranks, devices and limits,
/// supervises them as torchrun does, and serves the job's rendezvous store meanwhile.
struct RunCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "run",
    abstract: "Launch a job's workers on this host, one process per rank.",
    discussion: """
      Each --group adds COUNT workers of one device kind; ranks are numbered group by group in \
      the order given. Every worker runs the command after -- with RANK, WORLD_SIZE, \
      LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (a free port for torch's own \
      store) and Kaitian's variables: KAITIAN_DEVICE_KIND, KAITIAN_GROUP, KAITIAN_GROUP_RANK, \
      KAITIAN_GROUP_SIZE, KAITIAN_STORE and KAITIAN_TOKEN (the embedded store this command \
      starts), KAITIAN_JOB_ID, and with devices= the vendor's visibility variable \
      (CUDA_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES, MLU_VISIBLE_DEVICES, \
      ASCEND_RT_VISIBLE_DEVICES, ZE_AFFINITY_MASK).

      Group options: cpu=FRACTION limits each worker to that many CPUs with a cgroup (needs \
      root); cpus=LIST pins each worker to those CPUs (taskset); devices=LIST is what the \
      group's workers see, worker i using the i-th (KAITIAN_GROUP_RANK).

      Output is streamed line by line as "[rank R KIND] ..." and kept per rank in --log-dir. \
      When a worker fails, the others get SIGTERM, then SIGKILL after --grace-seconds, and \
      the command exits 1 naming the rank; Ctrl-C or SIGTERM stops every worker the same way \
      and exits 130. Jobs over several hosts are not supported yet.

      Examples:
        kaitian run --group cpu:1:cpu=1.0 --group cpu-slow:2:cpu=0.3 -- .venv/bin/python train.py
        kaitian run --group cuda:2:devices=0,1 --group mlu:2:devices=0,1 \\
          --prefix mlu='conda run -n cambricon' -- python train.py --epochs 2
      """)

  @Option(
    name: .customLong("group"),
    help: ArgumentHelp(
      "Workers of one kind: KIND:COUNT[:cpu=FRACTION][:cpus=LIST][:devices=LIST]; repeat it.",
      valueName: "group"))
  var groups: [String] = []

  @Option(
    name: .customLong("prefix"),
    help: ArgumentHelp(
      "A launch prefix for one kind's workers, split into words like a shell: KIND='conda run -n env'.",
      valueName: "kind=words"))
  var prefixes: [String] = []

  @Option(help: "Directory for the per-rank logs (default: ./kaitian-logs/<job id>).")
  var logDir: String?

  @Option(
    name: .customLong("job-id"), help: "The job's name: letters, digits, - and _ (default: random)."
  )
  var jobID: String?

  @Option(help: "Seconds between SIGTERM and SIGKILL when stopping workers.")
  var graceSeconds = 5.0

  @Flag(help: "Print the plan (ranks, commands, environment, quotas) and start nothing.")
  var dryRun = false

  @Flag(help: "With --dry-run: print the plan as one JSON document.")
  var json = false

  @Argument(parsing: .postTerminator, help: "The command every worker runs, after --.")
  var command: [String] = []

  func validate() throws {
    guard !groups.isEmpty else {
      throw ValidationError("give at least one --group KIND:COUNT, e.g. --group cpu:2")
    }
    _ = try parsedGroups()
    _ = try parsedPrefixes()
    guard !command.isEmpty else {
      throw ValidationError(
        "no command given: put the worker's command after --, e.g. "
          + "kaitian run --group cpu:2 -- python train.py")
    }
    guard graceSeconds >= 0 else { throw ValidationError("--grace-seconds must be 0 or more") }
    guard !json || dryRun else {
      throw ValidationError("--json prints the plan: use it with --dry-run")
    }
    if let jobID {
      guard !jobID.isEmpty, jobID.count <= 64,
        jobID.unicodeScalars.allSatisfy({
          ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
            || $0 == "-" || $0 == "_"
        })
      else {
        throw ValidationError("--job-id \(jobID): use 1 to 64 letters, digits, - and _")
      }
    }
  }

  func parsedGroups() throws(ValidationError) -> [GroupSpec] {
    let hostCPUs = Int(sysconf(Int32(_SC_NPROCESSORS_CONF)))
    var result: [GroupSpec] = []
    for group in groups { result.append(try GroupSpec(parsing: group, hostCPUs: hostCPUs)) }
    return result
  }

  /// KIND=WORDS per --prefix, each kind one of the groups'.
  func parsedPrefixes() throws(ValidationError) -> [String: [String]] {
    let kinds = Set(try parsedGroups().map(\.kind))
    var result: [String: [String]] = [:]
    for prefix in prefixes {
      guard let equals = prefix.firstIndex(of: "=") else {
        throw ValidationError(
          "--prefix \(prefix): expected KIND=WORDS, e.g. mlu='conda run -n env'")
      }
      let kind = String(prefix[..<equals])
      guard kinds.contains(kind) else {
        throw ValidationError(
          "--prefix \(prefix): no --group has kind '\(kind)' (kinds: \(kinds.sorted().joined(separator: ", ")))"
        )
      }
      guard result[kind] == nil else {
        throw ValidationError("--prefix for \(kind) is given twice")
      }
      let words = try ShellWords.split(String(prefix[prefix.index(after: equals)...]))
      guard !words.isEmpty else { throw ValidationError("--prefix \(prefix): the prefix is empty") }
      result[kind] = words
    }
    return result
  }

  func run() throws {
    let job = jobID ?? Self.randomJobID()
    let logDirectory = logDir ?? "kaitian-logs/\(job)"
    let groups = try parsedGroups()
    let prefixes = try parsedPrefixes()
    let needsTaskset = groups.contains { $0.cpuList != nil }
    let taskset = needsTaskset ? ExecutableSearch.find("taskset") : "taskset"
    if dryRun {
      let plan = RunPlan(
        groups: groups, prefixes: prefixes, command: command, jobID: job,
        logDirectory: logDirectory, store: RunPlan.pendingStore, masterPort: RunPlan.pendingPort,
        taskset: taskset ?? "taskset")
      print(json ? plan.json() : plan.describe())
      return
    }
    guard let taskset else {
      throw LaunchError("cpus= needs taskset (util-linux) on PATH; install it or drop cpus=")
    }
    try Directory.create(logDirectory)

    let token = JobToken.generate()
    let server = StoreServer(host: "127.0.0.1", port: 0, token: token)
    let storePort = try server.start()
    defer { server.stop() }
    let plan = RunPlan(
      groups: groups, prefixes: prefixes, command: command, jobID: job,
      logDirectory: logDirectory, store: "127.0.0.1:\(storePort)",
      masterPort: "\(try FreePort.pick())", taskset: taskset)
    let record = try JobRecord.start(plan: plan, store: "127.0.0.1:\(storePort)", token: token)

    let cgroups = plan.needsCgroups ? try CPUQuotaCgroups(job: job) : nil
    defer { cgroups?.remove() }
    var members: [LocalProcessGroup.Member] = []
    for rank in plan.ranks {
      var commandLine = rank.command
      if let cgroups, let fraction = rank.cpuFraction {
        let procs = try cgroups.addRank(rank.rank, cpus: fraction)
        commandLine =
          ["/bin/sh", "-c", CPUQuotaCgroups.entryScript(procsFile: procs), "kaitian-worker"]
          + commandLine
      }
      var environment = Dictionary(uniqueKeysWithValues: rank.environment)
      environment[JobToken.environmentVariable] = token.stringValue
      members.append(
        LocalProcessGroup.Member(
          name: rank.label, executable: commandLine[0], arguments: Array(commandLine.dropFirst()),
          environment: environment,
          output: .init(prefix: "[\(rank.label)] ", logPath: rank.logPath)))
    }

    Progress.say(
      "job \(job): \(plan.ranks.count) ranks, store 127.0.0.1:\(storePort), logs in \(logDirectory)"
        + (cgroups.map { ", cgroups in \($0.jobDirectory)" } ?? ""))
    var supervisor = LocalProcessGroup(graceSeconds: graceSeconds)
    supervisor.onEvent = { event in
      switch event {
      case .started(let index, let pid):
        let rank = plan.ranks[index]
        let limits = rank.cpuFraction.map { ", cpu quota \(RunPlan.format($0))" } ?? ""
        Progress.say("\(rank.label) started (pid \(pid)\(limits))")
      case .ended(let index, let ending):
        Progress.say(
          "\(plan.ranks[index].label) \(ending.exit) after \(Progress.seconds(ending.seconds))")
      case .interrupted(let signal):
        Progress.say(
          "\(signalName(signal)) received: stopping every rank (SIGTERM, SIGKILL after "
            + "\(Progress.seconds(graceSeconds)); Ctrl-C again to kill now)")
      }
    }
    let began = LocalProcessGroup.now()
    let outcome = try supervisor.run(members)
    record.finish(outcome)
    Progress.summary(plan: plan, outcome: outcome, seconds: LocalProcessGroup.now() - began)

    if let failure = outcome.firstFailure {
      throw LaunchError(
        "\(failure) (see \(plan.ranks[failure.index].logPath)); stopped the other ranks")
    }
    if let signal = outcome.interruption {
      Progress.say("interrupted by \(signalName(signal)); every rank stopped")
      throw ExitCode(130)
    }
  }

  private static func randomJobID() -> String {
    String(UInt32.random(in: 0...UInt32.max), radix: 16).leftPadded(to: 8)
  }
}

/// The launcher's own lines, on stderr so that stdout holds only the workers' output.
private enum Progress {
  static func say(_ text: String) {
    let bytes = Array("kaitian run: \(text)\n".utf8)
    _ = write(2, bytes, bytes.count)
  }

  static func seconds(_ value: Double) -> String {
    let hundredths = Int((value * 100).rounded())
    return "\(hundredths / 100).\(String(hundredths % 100).leftPadded(to: 2)) s"
  }

  static func summary(plan: RunPlan, outcome: LocalProcessGroup.Outcome, seconds total: Double) {
    var lines = ["summary after \(seconds(total)):"]
    let width = plan.ranks.map(\.label.count).max() ?? 0
    let exitWidth = outcome.endings.map { $0?.exit.description.count ?? 0 }.max() ?? 0
    for (rank, ending) in zip(plan.ranks, outcome.endings) {
      let label = rank.label.padding(to: width)
      guard let ending else {
        lines.append("  \(label)  not started")
        continue
      }
      lines.append(
        "  \(label)  \(ending.exit.description.padding(to: exitWidth))  \(seconds(ending.seconds))"
          + "  cpu \(seconds(ending.cpuSeconds))")
    }
    say(lines.joined(separator: "\n"))
  }
}

/// Finds programs the way execvp does, to report a missing one before starting anything.
enum ExecutableSearch {
  static func find(_ name: String) -> String? {
    guard !name.contains("/") else { return access(name, X_OK) == 0 ? name : nil }
    let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":") where access("\(directory)/\(name)", X_OK) == 0 {
      return "\(directory)/\(name)"
    }
    return nil
  }
}

/// mkdir -p.
enum Directory {
  static func create(_ path: String) throws(LaunchError) {
    var prefix = path.hasPrefix("/") ? "/" : ""
    for component in path.split(separator: "/") {
      prefix += component + "/"
      guard mkdir(prefix, 0o755) == 0 || errno == EEXIST else {
        throw LaunchError(
          "cannot create the log directory \(prefix): \(String(cString: strerror(errno)))")
      }
    }
  }
}

/// A port nobody listens on now, for torch's own TCPStore (MASTER_PORT). Another process may
/// take it before the worker binds it, as with torchrun; the window is short.
enum FreePort {
  static func pick() throws(LaunchError) -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else {
      throw LaunchError("cannot pick a free port: \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
      }
    }
    guard bound else {
      throw LaunchError("cannot pick a free port: \(String(cString: strerror(errno)))")
    }
    return UInt16(bigEndian: address.sin_port)
  }
}

extension String {
  func leftPadded(to width: Int) -> String {
    String(repeating: "0", count: max(0, width - count)) + self
  }

  func padding(to width: Int) -> String {
    self + String(repeating: " ", count: max(0, width - count))
  }
}
