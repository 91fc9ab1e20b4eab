import ArgumentParser
import Foundation
import Glibc
import KaitianDevices
import KaitianLaunch
import KaitianOutput
import KaitianStore

/// `kaitian run`: starts a job's workers on this host with their ranks, devices and limits,
/// supervises them as torchrun does, and serves the job's rendezvous store meanwhile. With
/// several hosts, one `kaitian run` per host; node 0's serves the store and all of them meet
/// there.
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
      starts, or the Redis of --store, keys under kaitian/<job id>/), KAITIAN_JOB_ID, and \
      with devices= the vendor's visibility variable \
      (CUDA_VISIBLE_DEVICES, HIP_VISIBLE_DEVICES, MLU_VISIBLE_DEVICES, \
      ASCEND_RT_VISIBLE_DEVICES, ZE_AFFINITY_MASK).

      Group options: cpu=FRACTION limits each worker to that many CPUs with a cgroup (needs \
      root); cpus=LIST pins each worker to those CPUs (taskset); devices=LIST is what the \
      group's workers see, worker i using the i-th (KAITIAN_GROUP_RANK). Accelerator groups \
      must fit the devices `kaitian devices` finds (--no-device-check skips that).

      --job-file FILE describes the groups, command, environment and launch prefixes in TOML \
      instead of --group and --prefix (see docs/CLI.md); words after -- are appended to its \
      commands.

      Several hosts: run kaitian run on each with --nnodes N, its --node-rank, the same \
      --master-addr (node 0's address: node 0 serves the store on --store-port), the same \
      --job-id and the same token (KAITIAN_TOKEN, KAITIAN_TOKEN_FILE or --token-file). Under \
      srun these come from SLURM_NNODES, SLURM_NODEID, SLURM_JOB_ID and scontrol. A worker \
      failing on any host stops the job on every host.

      Output is streamed line by line as "[rank R KIND] ..." and kept per rank in --log-dir. \
      When a worker fails, the others get 1 s to stop by themselves (so each can log which \
      rank it lost), then SIGTERM, then SIGKILL after --grace-seconds, and the command exits 1 \
      naming the rank; Ctrl-C or SIGTERM stops every worker the same way \
      and exits 130.

      Examples:
        kaitian run --group cpu:1:cpu=1.0 --group cpu-slow:2:cpu=0.3 -- .venv/bin/python train.py
        kaitian run --group cuda:2:devices=0,1 --group mlu:2:devices=0,1 \\
          --prefix mlu='conda run -n cambricon' -- python train.py --epochs 2
        kaitian run --job-file job.toml -- --epochs 2
        kaitian run --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --job-id j1 \\
          --token-file /shared/token --group cuda:8 -- python train.py
      """)

  @Option(
    name: .customLong("group"),
    help: ArgumentHelp(
      "Workers of one kind: KIND:COUNT[:cpu=FRACTION][:cpus=LIST][:devices=LIST][:speed=F]; "
        + "repeat it. speed=F emulates a device F times as fast as a host core (compute paced, "
        + "host threads free).",
      valueName: "group"))
  var groups: [String] = []

  @Option(
    name: .customLong("prefix"),
    help: ArgumentHelp(
      "A launch prefix for one kind's workers, split into words like a shell: KIND='conda run -n env'.",
      valueName: "kind=words"))
  var prefixes: [String] = []

  @Option(
    name: .customLong("job-file"),
    help: ArgumentHelp("A TOML job file instead of --group and --prefix.", valueName: "path"))
  var jobFile: String?

  @Option(help: "Directory for the per-rank logs (default: ./kaitian-logs/<job id>).")
  var logDir: String?

  @Option(
    name: .customLong("job-id"),
    help: "The job's name: letters, digits, - and _ (default: random; SLURM_JOB_ID under Slurm)."
  )
  var jobID: String?

  @Option(
    help: ArgumentHelp(
      "Use Redis as the job's store instead of serving one: redis://[:password@]host[:port][/db] "
        + "(rediss:// for TLS; see docs/CLI.md for the certificate variables).",
      valueName: "url"))
  var store: String?

  @Option(help: "Seconds between SIGTERM and SIGKILL when stopping workers (default: 5).")
  var graceSeconds: Double?

  @Option(help: "Number of hosts (nodes) in the job (default: 1, or SLURM_NNODES).")
  var nnodes: Int?

  @Option(help: "This host's node rank, 0 to nnodes-1 (default: SLURM_NODEID).")
  var nodeRank: Int?

  @Option(help: "Node 0's address that every node reaches (default: Slurm's first host).")
  var masterAddr: String?

  @Option(help: "Port of the store that node 0 serves when there are several nodes.")
  var storePort: UInt16 = 29_400

  @Option(help: "File holding the job token every node shares (overrides KAITIAN_TOKEN).")
  var tokenFile: String?

  @Option(help: "Seconds to wait for every node to join the store.")
  var joinTimeout = 300.0

  @Flag(help: "Launch accelerator groups even where `kaitian devices` does not find them.")
  var noDeviceCheck = false

  @Flag(help: "Print the plan (ranks, commands, environment, quotas) and start nothing.")
  var dryRun = false

  @Flag(help: "With --dry-run: print the plan as one JSON document.")
  var json = false

  @Argument(parsing: .postTerminator, help: "The command every worker runs, after --.")
  var command: [String] = []

  /// What the flags or the job file ask for, before anything about hosts is known.
  struct JobDescription {
    var groups: [GroupSpec]
    /// How to name group i in messages: its --group flag or its place in the job file.
    var labels: [String]
    var command: [String]
    var environment: [String: String]
    var jobID: String?
    var logDirectory: String?
    var graceSeconds: Double
  }

  func validate() throws {
    if jobFile != nil {
      guard groups.isEmpty && prefixes.isEmpty else {
        throw ValidationError(
          "--job-file describes the groups and prefixes: drop --group and --prefix, or drop "
            + "--job-file")
      }
    } else {
      guard !groups.isEmpty else {
        throw ValidationError(
          "give at least one --group KIND:COUNT, e.g. --group cpu:2, or a --job-file")
      }
      guard !command.isEmpty else {
        throw ValidationError(
          "no command given: put the worker's command after --, e.g. "
            + "kaitian run --group cpu:2 -- python train.py")
      }
    }
    let job = try describedJob()
    let placement = try resolvedPlacement(job)
    if !dryRun { _ = try jobToken(placement) }
    if let graceSeconds, graceSeconds < 0 {
      throw ValidationError("--grace-seconds must be 0 or more")
    }
    guard joinTimeout > 0 else { throw ValidationError("--join-timeout must be more than 0") }
    if let store { _ = try JobStore.parse(store) }
    guard !json || dryRun else {
      throw ValidationError("--json prints the plan: use it with --dry-run")
    }
    if let jobID, let problem = Self.jobIDProblem(jobID) {
      throw ValidationError("--job-id \(jobID): \(problem)")
    }
  }

  /// Why `id` cannot be a job id, or nil when it can.
  static func jobIDProblem(_ id: String) -> String? {
    let valid =
      !id.isEmpty && id.count <= 64
      && id.unicodeScalars.allSatisfy {
        ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
          || $0 == "-" || $0 == "_"
      }
    return valid ? nil : "use 1 to 64 letters, digits, - and _"
  }

  static var hostCPUs: Int { Int(sysconf(Int32(_SC_NPROCESSORS_CONF))) }

  func parsedGroups() throws(ValidationError) -> [GroupSpec] {
    var result: [GroupSpec] = []
    for group in groups { result.append(try GroupSpec(parsing: group, hostCPUs: Self.hostCPUs)) }
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

  /// The job from --job-file (flags for the log directory, job id and grace period win over
  /// the file's), or from --group and --prefix.
  func describedJob() throws(ValidationError) -> JobDescription {
    guard let jobFile else {
      let prefixes = try parsedPrefixes()
      var groups = try parsedGroups()
      for index in groups.indices { groups[index].prefix = prefixes[groups[index].kind] ?? [] }
      return JobDescription(
        groups: groups, labels: self.groups.map { "--group \($0)" }, command: command,
        environment: [:], jobID: jobID, logDirectory: logDir, graceSeconds: graceSeconds ?? 5)
    }
    let file: JobFile
    do {
      file = try JobFile.load(
        path: jobFile, hostCPUs: Self.hostCPUs, commandOnCommandLine: !command.isEmpty)
    } catch {
      throw ValidationError(error.description)
    }
    var groups = file.groups
    for index in groups.indices where groups[index].command != nil {
      groups[index].command! += command
    }
    return JobDescription(
      groups: groups,
      labels: file.groupLines.enumerated().map { index, line in
        "\(jobFile)\(line.map { ":\($0)" } ?? ""): [[group]] \(index + 1)"
      },
      command: (file.command ?? []) + command, environment: file.environment,
      jobID: jobID ?? file.jobID, logDirectory: logDir ?? file.logDirectory,
      graceSeconds: graceSeconds ?? file.graceSeconds ?? 5)
  }

  /// Which node this is, from the flags or Slurm; several nodes need a shared job id.
  func resolvedPlacement(_ job: JobDescription) throws(ValidationError) -> NodePlacement {
    let placement = try NodePlacement.resolve(
      nnodes: nnodes, nodeRank: nodeRank, masterAddress: masterAddr, jobID: job.jobID,
      environment: LocalProcessGroup.currentEnvironment(),
      firstSlurmHost: {
        NodePlacement.firstSlurmHost(environment: LocalProcessGroup.currentEnvironment())
      })
    guard placement.nodeCount == 1 || placement.jobID != nil else {
      throw ValidationError(
        "--nnodes \(placement.nodeCount) needs --job-id (the same on every node) so that the "
          + "nodes find each other in the store")
    }
    return placement
  }

  func run() throws {
    let job = try describedJob()
    let placement = try resolvedPlacement(job)
    let jobID = placement.jobID ?? Self.randomJobID()
    if let problem = Self.jobIDProblem(jobID) {
      throw ValidationError("job id \(jobID): \(problem)")
    }
    let logDirectory = job.logDirectory ?? "kaitian-logs/\(jobID)"
    let needsTaskset = job.groups.contains { $0.cpuList != nil }
    let taskset = needsTaskset ? ExecutableSearch.find("taskset") : "taskset"
    if dryRun {
      let plan = RunPlan(
        groups: job.groups, command: job.command, environment: job.environment, jobID: jobID,
        logDirectory: logDirectory,
        store: try self.store.map { "\(try JobStore.parse($0))" }
          ?? (placement.nodeCount > 1
            ? Endpoint(host: placement.masterAddress, port: storePort).description
            : RunPlan.pendingStore),
        masterAddress: placement.masterAddress, masterPort: RunPlan.pendingPort,
        taskset: taskset ?? "taskset",
        layout: NodeLayout(
          nodeRank: placement.nodeRank, nodeCount: placement.nodeCount,
          worldSize: job.groups.reduce(0) { $0 + $1.count }, hostID: hostID(placement)))
      if placement.nodeCount > 1 {
        Progress.say(
          "dry run of node \(placement.nodeRank) of \(placement.nodeCount): ranks are shown from "
            + "0; the real ones follow the other nodes' when they join")
      }
      print(json ? plan.json() : plan.describe())
      return
    }
    guard let taskset else {
      throw LaunchError("cpus= needs taskset (util-linux) on PATH; install it or drop cpus=")
    }
    let needsDevices = job.groups.contains { DeviceCheck.acceleratorKinds.contains($0.kind) }
    if !noDeviceCheck, needsDevices,
      let problem = DeviceCheck.problem(
        groups: job.groups.map(\.deviceRequest), probes: DeviceProbe.probeTools(timeoutSeconds: 10),
        label: { job.labels[$0] })
    {
      throw LaunchError(problem)
    }
    try Directory.createOwned(logDirectory)

    let token = try jobToken(placement)
    let store = try JobStore.open(
      option: self.store, placement: placement, storePort: storePort, joinTimeout: joinTimeout,
      jobID: jobID, token: token)
    defer { store.close().map { Progress.say($0) } }
    let (layout, masterPort) = try place(job, placement: placement, store: store, jobID: jobID)
    let plan = RunPlan(
      groups: job.groups, command: job.command, environment: job.environment, jobID: jobID,
      logDirectory: logDirectory, store: store.address, masterAddress: placement.masterAddress,
      masterPort: masterPort, taskset: taskset, layout: layout)
    let record = try JobRecord.start(plan: plan, store: store, token: token)
    try supervise(
      plan, token: token, store: store.description, rendezvous: store.rendezvous,
      record: record, graceSeconds: job.graceSeconds)
  }

  /// This node's place in the job and torch's MASTER_PORT: on one host, everything; on
  /// several, what the node rendezvous in the store decides.
  private func place(
    _ job: JobDescription, placement: NodePlacement, store: JobStore, jobID: String
  ) throws -> (NodeLayout, String) {
    guard let rendezvous = store.rendezvous else {
      return (
        NodeLayout(worldSize: job.groups.reduce(0) { $0 + $1.count }), "\(try FreePort.pick())"
      )
    }
    Progress.say(
      "job \(jobID): node \(placement.nodeRank) of \(placement.nodeCount) (from "
        + "\(placement.source)) joining the store at \(store.address)")
    var (layout, masterPort) = try rendezvous.join(
      NodeRendezvous.Registration(
        nodeCount: placement.nodeCount, hostID: hostID(placement) ?? "",
        masterPort: placement.nodeRank == 0 ? "\(try FreePort.pick())" : nil,
        groups: job.groups.map { "\($0.kind):\($0.count)" }),
      timeoutSeconds: joinTimeout, progress: Progress.say)
    let inherited = LocalProcessGroup.currentEnvironment()
    if inherited["KAITIAN_SOCKET_ADDR"] == nil && inherited["KAITIAN_SOCKET_IFNAME"] == nil {
      layout.socketAddress = store.localAddress
    }
    return (layout, masterPort)
  }

  /// Starts every rank of the plan and supervises them until they end; on several nodes,
  /// publishes a local failure and stops when another node publishes one.
  private func supervise(
    _ plan: RunPlan, token: JobToken, store: String, rendezvous: NodeRendezvous?,
    record: JobRecord, graceSeconds: Double
  ) throws {
    // `store` names the store in the launcher's lines (a Redis password never shows).
    let cgroups = plan.needsCgroups ? try CPUQuotaCgroups(job: plan.jobID) : nil
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

    let layout = plan.layout
    let place =
      layout.nodeCount > 1
      ? " on node \(layout.nodeRank) of \(layout.nodeCount) (ranks \(layout.firstRank)-"
        + "\(layout.firstRank + plan.ranks.count - 1) of \(layout.worldSize))" : ""
    Progress.say(
      "job \(plan.jobID): \(plan.ranks.count) ranks\(place), store \(store), logs in "
        + plan.logDirectory
        + (cgroups.map { ", cgroups in \($0.jobDirectory)" } ?? ""))
    let watch = try rendezvous.map { rendezvous throws(LaunchError) in
      try FailureWatch(rendezvous: rendezvous, intervalSeconds: 0.25)
    }
    var supervisor = LocalProcessGroup(graceSeconds: graceSeconds)
    supervisor.guardExecutable = currentExecutablePath()
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
    if let watch {
      supervisor.stopRequest = {
        guard let failure = watch.failure else { return false }
        Progress.say("stopping this node's ranks: \(failure)")
        return true
      }
    }
    let began = LocalProcessGroup.now()
    let outcome: LocalProcessGroup.Outcome
    do {
      outcome = try supervisor.run(members)
    } catch {
      watch?.stop()
      rendezvous?.reportFailure("could not start its ranks: \(error)")
      throw error
    }
    watch?.stop()
    record.finish(outcome)
    Progress.summary(plan: plan, outcome: outcome, seconds: LocalProcessGroup.now() - began)

    if let failure = outcome.firstFailure {
      let text = "\(failure) (see \(plan.ranks[failure.index].logPath))"
      rendezvous?.reportFailure(text)
      throw LaunchError("\(text); stopped the other ranks")
    }
    if let signal = outcome.interruption {
      rendezvous?.reportFailure("interrupted by \(signalName(signal))")
      Progress.say("interrupted by \(signalName(signal)); every rank stopped")
      throw ExitCode(130)
    }
    if outcome.stoppedOnRequest {
      throw LaunchError(
        "the job failed on another node (\(watch?.failure ?? "unknown")); stopped this node's ranks"
      )
    }
    if let rendezvous { try finish(rendezvous) }
  }

  /// Records this node's success; node 0 then keeps serving the store until every node is
  /// done, since their workers still use it, or until one fails or stops sending heartbeats.
  private func finish(_ rendezvous: NodeRendezvous) throws {
    try rendezvous.markDone()
    guard rendezvous.nodeRank == 0 else { return }
    let silenceLimit = 30.0
    var lastReport = LocalProcessGroup.now()
    var heartbeats: [Int: (value: String?, since: Double)] = [:]
    while true {
      let now = LocalProcessGroup.now()
      let state: (nodes: [Int], failure: String?)
      do {
        state = try rendezvous.unfinished()
        for node in state.nodes {
          let value = try rendezvous.heartbeat(of: node)
          if heartbeats[node]?.value != value || heartbeats[node] == nil {
            heartbeats[node] = (value, now)
          }
        }
      } catch {
        throw LaunchError("node 0 cannot read the job's state from its own store: \(error)")
      }
      if let failure = state.failure {
        throw LaunchError("this node's ranks succeeded but the job failed: \(failure)")
      }
      if state.nodes.isEmpty { return }
      if let silent = state.nodes.first(where: { now - heartbeats[$0]!.since > silenceLimit }) {
        throw LaunchError(
          rendezvous.reportFailure(
            "node \(silent) sent no heartbeat for \(Int(silenceLimit)) s without finishing (was "
              + "its kaitian run killed?)"))
      }
      if now - lastReport >= 10 {
        lastReport = now
        Progress.say(
          "waiting for node\(state.nodes.count == 1 ? "" : "s") "
            + "\(state.nodes.map(String.init).joined(separator: ", ")) to finish (they use this "
            + "node's store)")
      }
      usleep(200_000)
    }
  }

  /// KAITIAN_HOST_ID for the workers of several nodes: the launcher's own value if it has
  /// one, else the host name and node rank (hosts in network namespaces or containers often
  /// share a host name, and equal ids would make the engine try shared memory between them).
  private func hostID(_ placement: NodePlacement) -> String? {
    guard placement.nodeCount > 1 else { return nil }
    if let own = LocalProcessGroup.currentEnvironment()["KAITIAN_HOST_ID"], !own.isEmpty {
      return own
    }
    var name = [CChar](repeating: 0, count: 256)
    gethostname(&name, name.count - 1)
    let bytes = name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return "\(String(decoding: bytes, as: UTF8.self))-node\(placement.nodeRank)"
  }

  /// A fresh token on one host; on several, the one every node was given.
  private func jobToken(_ placement: NodePlacement) throws(ValidationError) -> JobToken {
    guard placement.nodeCount > 1 else { return JobToken.generate() }
    do {
      if let tokenFile {
        // The file wins over KAITIAN_TOKEN, as with `kaitian store serve --token-file`.
        unsetenv(JobToken.environmentVariable)
        setenv(JobToken.fileEnvironmentVariable, tokenFile, 1)
      }
      if let token = try JobToken.fromEnvironment() { return token }
    } catch {
      throw ValidationError("the job token: \(error)")
    }
    throw ValidationError(
      "--nnodes \(placement.nodeCount) needs the job token that every node shares: set "
        + "KAITIAN_TOKEN or KAITIAN_TOKEN_FILE, or give --token-file (`kaitian store serve "
        + "--generate-token --token-file FILE` writes one)")
  }

  private static func randomJobID() -> String {
    String(format: "%08x", UInt32.random(in: 0...UInt32.max))
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
    return String(format: "%d.%02d s", hundredths / 100, hundredths % 100)
  }

  static func summary(plan: RunPlan, outcome: LocalProcessGroup.Outcome, seconds total: Double) {
    var lines = ["summary after \(seconds(total)):"]
    let width = plan.ranks.map(\.label.count).max() ?? 0
    let exitWidth = outcome.endings.map { $0?.exit.description.count ?? 0 }.max() ?? 0
    for (rank, ending) in zip(plan.ranks, outcome.endings) {
      let label = rank.label.padding(toLength: width, withPad: " ", startingAt: 0)
      guard let ending else {
        lines.append("  \(label)  not started")
        continue
      }
      lines.append(
        "  \(label)  \(ending.exit.description.padding(toLength: exitWidth, withPad: " ", startingAt: 0))  \(seconds(ending.seconds))"
          + "  cpu \(seconds(ending.cpuSeconds))")
    }
    say(lines.joined(separator: "\n"))
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

  /// `create`, and the directory (a link's target) must then belong to this user. Why: the
  /// owner of a job's log directory can read the files written there (the logs, the token) and
  /// replace them (job.json) between writes.
  static func createOwned(_ path: String) throws(LaunchError) {
    try create(path)
    var status = stat()
    guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
      throw LaunchError("the log directory \(path) is not a directory; choose another")
    }
    guard status.st_uid == geteuid() else {
      throw LaunchError(
        "the log directory \(path) belongs to user \(status.st_uid), not to you (\(geteuid())): "
          + "its owner could read or replace the job's files; choose a directory of your own")
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
