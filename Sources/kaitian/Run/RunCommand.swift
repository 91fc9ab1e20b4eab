import ArgumentParser
import Foundation
import Glibc
import KaitianAuth
import KaitianDevices
import KaitianLaunch
import KaitianOutput
import KaitianPOSIX

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

  /// The token every node shares (several nodes; one host makes a fresh one).
  @OptionGroup var auth: TokenOptions

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
    if let store {
      do { _ = try JobStore.parse(store) } catch { throw ValidationError(error) }
    }
    guard !json || dryRun else {
      throw ValidationError("--json prints the plan: use it with --dry-run")
    }
    if let jobID, let problem = RunPlan.jobIDProblem(jobID) {
      throw ValidationError("--job-id \(jobID): \(problem)")
    }
  }

  static var hostCPUs: Int { Int(sysconf(Int32(_SC_NPROCESSORS_CONF))) }

  func parsedGroups() throws(ValidationError) -> [GroupSpec] {
    var result: [GroupSpec] = []
    for group in groups {
      do {
        result.append(try GroupSpec(parsing: group, hostCPUs: Self.hostCPUs))
      } catch {
        throw ValidationError(error)
      }
    }
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
      let words: [String]
      do {
        words = try ShellWords.split(String(prefix[prefix.index(after: equals)...]))
      } catch {
        throw ValidationError(error)
      }
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
    let placement: NodePlacement
    do {
      placement = try NodePlacement.resolve(
        nnodes: nnodes, nodeRank: nodeRank, masterAddress: masterAddr, jobID: job.jobID,
        environment: LocalProcessGroup.currentEnvironment(),
        firstSlurmHost: {
          NodePlacement.firstSlurmHost(environment: LocalProcessGroup.currentEnvironment())
        })
    } catch {
      throw ValidationError(error)
    }
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
    if let problem = RunPlan.jobIDProblem(jobID) {
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
          worldSize: job.groups.reduce(0) { $0 + $1.count },
          hostID: placement.hostID(environment: LocalProcessGroup.currentEnvironment())))
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
    let needsDevices = job.groups.contains { DeviceKind.isAccelerator($0.kind) }
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
        nodeCount: placement.nodeCount,
        hostID: placement.hostID(environment: LocalProcessGroup.currentEnvironment()) ?? "",
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
    let members = try plan.processes(token: token, cgroups: cgroups)

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
    try rendezvous?.finish(progress: Progress.say)
  }

  /// A fresh token on one host; on several, the one every node was given.
  private func jobToken(_ placement: NodePlacement) throws(ValidationError) -> JobToken {
    guard placement.nodeCount > 1 else { return JobToken.generate() }
    do {
      if let token = try auth.token() { return token }
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
    let rows = zip(plan.ranks, outcome.endings).map { rank, ending in
      guard let ending else { return [rank.label, "not started", "", ""] }
      return [
        rank.label, ending.exit.description, seconds(ending.seconds),
        "cpu \(seconds(ending.cpuSeconds))",
      ]
    }
    let table = AlignedColumns.lines(rows, rightAligned: [2]).map { "  \($0)" }
    say((["summary after \(seconds(total)):"] + table).joined(separator: "\n"))
  }
}

extension GroupSpec {
  /// What the group asks of this host's devices, for the check before launch.
  var deviceRequest: DeviceCheck.Request { .init(kind: kind, count: count, devices: devices) }
}

extension ValidationError {
  /// The launcher library's usage error, reported as ArgumentParser reports a bad option: with
  /// the command's usage and exit status 64.
  init(_ error: UsageError) { self.init(error.description) }
}
