import ArgumentParser
import Foundation
import Glibc
import Testing

@testable import KaitianCLI
@testable import KaitianDevices
@testable import KaitianLaunch

@Suite("kaitian run: several nodes and Slurm, as values")
struct NodePlacementTests {
  private func resolve(
    _ nnodes: Int? = nil, rank: Int? = nil, master: String? = nil, jobID: String? = nil,
    environment: [String: String] = [:], slurmHost: String? = nil
  ) throws(UsageError) -> NodePlacement {
    try NodePlacement.resolve(
      nnodes: nnodes, nodeRank: rank, masterAddress: master, jobID: jobID,
      environment: environment, firstSlurmHost: { slurmHost })
  }

  private func problem(_ body: () throws(UsageError) -> NodePlacement) -> String {
    do {
      _ = try body()
      return "accepted"
    } catch {
      return error.description
    }
  }

  @Test func oneHostNeedsNothing() throws {
    #expect(try resolve() == NodePlacement())
  }

  @Test func flagsGiveNodeCountRankAndMaster() throws {
    let placement = try resolve(3, rank: 2, master: "10.0.0.1", jobID: "j")
    #expect(placement.nodeCount == 3 && placement.nodeRank == 2)
    #expect(placement.masterAddress == "10.0.0.1" && placement.jobID == "j")
    #expect(
      problem { () throws(UsageError) in try resolve(2, master: "h") }.contains(
        "needs --node-rank"))
    #expect(
      problem { () throws(UsageError) in try resolve(2, rank: 2, master: "h") }.contains(
        "outside 0...1"))
    #expect(
      problem { () throws(UsageError) in try resolve(2, rank: 1) }.contains(
        "needs --master-addr"))
    #expect(problem { () throws(UsageError) in try resolve(0) }.contains("at least 1"))
  }

  @Test func slurmVariablesFillWhatFlagsLeaveOut() throws {
    let slurm = [
      "SLURM_NNODES": "4", "SLURM_NODEID": "3", "SLURM_JOB_ID": "8812",
      "SLURM_JOB_NODELIST": "gpu[01-04]",
    ]
    let placement = try resolve(environment: slurm, slurmHost: "gpu01")
    #expect(placement.nodeCount == 4 && placement.nodeRank == 3)
    #expect(placement.masterAddress == "gpu01" && placement.jobID == "slurm-8812")
    #expect(placement.source == "Slurm")
    // Flags win over Slurm's values.
    let flagged = try resolve(
      rank: 1, master: "10.1.1.1", jobID: "mine", environment: slurm, slurmHost: "gpu01")
    #expect(flagged.nodeRank == 1 && flagged.masterAddress == "10.1.1.1" && flagged.jobID == "mine")
    #expect(
      problem { () throws(UsageError) in try resolve(environment: slurm, slurmHost: nil) }
        .contains("scontrol is not on PATH"))
    #expect(
      problem { () throws(UsageError) in
        try resolve(environment: ["SLURM_NNODES": "2"], slurmHost: "a")
      }
      .contains("SLURM_NODEID is not"))
  }

  @Test func deviceCheckRefusesMissingAccelerators() throws {
    let gpu = Device(kind: "cuda", index: 0, name: "A100", memoryBytes: nil)
    let probes = [
      ToolProbe(tool: "nvidia-smi", kind: "cuda", status: .found, devices: [gpu]),
      ToolProbe(tool: "cnmon", kind: "mlu", status: .notFound, devices: []),
    ]
    let check = { (groups: [GroupSpec]) in
      DeviceCheck.problem(
        groups: groups.map(\.deviceRequest), probes: probes, label: { "group \($0)" })
    }
    #expect(check([try GroupSpec(kind: "cuda", count: 1, hostCPUs: 2)]) == nil)
    #expect(check([try GroupSpec(kind: "cpu", count: 64, hostCPUs: 2)]) == nil)
    #expect(
      check([try GroupSpec(kind: "cuda", count: 2, hostCPUs: 2)])?.contains(
        "group 0: 2 cuda workers but this host has 1 cuda device (0)") == true)
    #expect(
      check([try GroupSpec(kind: "cuda", count: 1, devices: [3], hostCPUs: 2)])?.contains(
        "cuda device 3 does not exist; nvidia-smi lists 0") == true)
    #expect(
      check([try GroupSpec(kind: "mlu", count: 1, hostCPUs: 2)])?.contains(
        "no mlu devices here (cnmon not found); pass --no-device-check") == true)
    #expect(
      check([try GroupSpec(kind: "xpu", count: 1, hostCPUs: 2)])?.contains(
        "cannot list xpu devices") == true)
  }

  @Test func registrationsRoundTrip() throws {
    let registration = NodeRendezvous.Registration(
      nodeCount: 2, hostID: "a-node0", masterPort: "29500", groups: ["cuda:2", "cpu-slow:3"])
    #expect(NodeRendezvous.Registration(decoding: registration.encoded) == registration)
    #expect(registration.workers == 5)
    #expect(NodeRendezvous.Registration(decoding: Array("garbage".utf8)) == nil)
  }
}

/// Launchers of several nodes as processes on this machine: over loopback, and in network
/// namespaces joined by a veth pair where this machine allows making them.
@Suite("kaitian run: several nodes", .serialized)
struct MultiNodeJobTests {
  static let token = String(repeating: "5a", count: 32)

  /// `kaitian run` as node `rank` of `nnodes`, with the shared token and its own host id.
  private func node(
    _ rank: Int, of nnodes: Int, port: UInt16, job: String, groups: [String],
    extra: [String] = [], command: [String], environment: [String: String] = [:],
    wrapper: [String] = []
  ) throws -> ChildProcess {
    var template = Array("/tmp/kaitian-node-logs-XXXXXX".utf8CString)
    let logs = String(cString: mkdtemp(&template))
    var env = LocalProcessGroup.currentEnvironment()
    env["KAITIAN_TOKEN"] = Self.token
    env["KAITIAN_HOST_ID"] = "test-host-\(rank)"
    for (key, value) in environment { env[key] = value }
    let arguments =
      [
        "run", "--nnodes", "\(nnodes)", "--node-rank", "\(rank)", "--store-port", "\(port)",
        "--job-id", job, "--log-dir", logs, "--grace-seconds", "1",
      ] + extra + groups.flatMap { ["--group", $0] } + ["--"] + command
    guard let first = wrapper.first else {
      return try ChildProcess("kaitian", arguments, environment: env)
    }
    return try ChildProcess(
      first, Array(wrapper.dropFirst()) + [ChildProcess.builtProduct("kaitian")] + arguments,
      environment: env)
  }

  @Test func twoNodesOnLoopbackNumberEveryRankOnce() throws {
    let port = try FreePort.pick()
    let print = [
      "/bin/sh", "-c",
      "echo seen rank=$RANK world=$WORLD_SIZE local=$LOCAL_RANK/$LOCAL_WORLD_SIZE "
        + "host=$KAITIAN_HOST_ID node=$KAITIAN_NODE_RANK store=$KAITIAN_STORE",
    ]
    let master = ["--master-addr", "127.0.0.1"]
    let one = try node(
      1, of: 2, port: port, job: "loop", groups: ["cpu:1", "cpu-b:2"], extra: master,
      command: print)
    let zero = try node(
      0, of: 2, port: port, job: "loop", groups: ["cpu:2"], extra: master, command: print)
    #expect(zero.wait(seconds: 30) == 0, "\(zero.errors)")
    #expect(one.wait(seconds: 30) == 0, "\(one.errors)")
    let lines = (zero.output + one.output).split(separator: "\n").filter { $0.contains("seen ") }
    let ranks = lines.compactMap { line in
      line.split(separator: " ").first { $0.hasPrefix("rank=") }.flatMap { Int($0.dropFirst(5)) }
    }
    #expect(ranks.sorted() == [0, 1, 2, 3, 4], "\(lines)")
    #expect(lines.allSatisfy { $0.contains("world=5") && $0.contains("store=127.0.0.1:\(port)") })
    #expect(zero.output.contains("rank=1 world=5 local=1/2 host=test-host-0 node=0"))
    #expect(one.output.contains("rank=2 world=5 local=0/3 host=test-host-1 node=1"))
    #expect(one.output.contains("rank=4 world=5 local=2/3 host=test-host-1 node=1"))
    #expect(one.errors.contains("ranks 2-4 of 5"))
  }

  @Test func aWorkerFailingOnOneNodeStopsTheOther() throws {
    let port = try FreePort.pick()
    let master = ["--master-addr", "127.0.0.1"]
    let marker = "kaitian-node-fail-\(getpid())"
    let started = ProcessJob.now()
    let zero = try node(
      0, of: 2, port: port, job: "fail", groups: ["cpu:2"], extra: master,
      command: ["/bin/sh", "-c", "echo ready; sleep 30 # \(marker)"])
    let one = try node(
      1, of: 2, port: port, job: "fail", groups: ["cpu:1"], extra: master,
      command: ["/bin/sh", "-c", "sleep 1; exit 7"])
    #expect(one.wait(seconds: 20) == 1)
    #expect(zero.wait(seconds: 20) == 1)
    #expect(ProcessJob.now() - started < 15)
    #expect(one.errors.contains("rank 2 cpu exited with status 7"))
    #expect(
      zero.errors.contains(
        "the job failed on another node (node 1: rank 2 cpu exited with status 7"),
      "\(zero.errors)")
    #expect(KaitianProcess.noProcessMatches(marker))
  }

  @Test func interruptingOneNodeStopsBoth() throws {
    let port = try FreePort.pick()
    let master = ["--master-addr", "127.0.0.1"]
    let marker = "kaitian-node-int-\(getpid())"
    let sleeper = ["/bin/sh", "-c", "echo ready; sleep 30 # \(marker)"]
    let zero = try node(
      0, of: 2, port: port, job: "int", groups: ["cpu:1"], extra: master, command: sleeper)
    let one = try node(
      1, of: 2, port: port, job: "int", groups: ["cpu:1"], extra: master, command: sleeper)
    #expect(zero.waitForOutput("ready", seconds: 15) && one.waitForOutput("ready", seconds: 15))
    one.signal(SIGINT)
    #expect(one.wait(seconds: 10) == 130)
    #expect(zero.wait(seconds: 10) == 1)
    #expect(zero.errors.contains("node 1: interrupted by SIGINT"), "\(zero.errors)")
    #expect(KaitianProcess.noProcessMatches(marker))
  }

  @Test func aNodeWhoseLauncherDiesStopsNodeZerosWait() throws {
    let port = try FreePort.pick()
    let master = ["--master-addr", "127.0.0.1"]
    let zero = try node(
      0, of: 2, port: port, job: "dead", groups: ["cpu:1"], extra: master, command: ["true"])
    let one = try node(
      1, of: 2, port: port, job: "dead", groups: ["cpu:1"], extra: master,
      command: ["/bin/sh", "-c", "echo worker $$; exec sleep 60"])
    #expect(one.waitForOutput("worker ", seconds: 15))
    // SIGKILL leaves no chance to publish anything; its worker is orphaned and ended here.
    one.signal(SIGKILL)
    _ = one.wait(seconds: 5)
    let orphan = one.output.split(separator: " ").last.flatMap {
      Int32($0.trimmingCharacters(in: .whitespaces))
    }
    defer { if let orphan { kill(orphan, SIGKILL) } }
    #expect(zero.wait(seconds: 50) == 1)
    #expect(
      zero.errors.contains("node 1 sent no heartbeat for 30 s without finishing"), "\(zero.errors)")
  }

  @Test func aNodeThatNeverJoinsIsATimeout() throws {
    let port = try FreePort.pick()
    let zero = try node(
      0, of: 3, port: port, job: "late", groups: ["cpu:1"],
      extra: ["--master-addr", "127.0.0.1", "--join-timeout", "1"], command: ["true"])
    #expect(zero.wait(seconds: 20) == 1)
    #expect(
      zero.errors.contains("nodes 1, 2 of 3 did not join job late within 1 s"), "\(zero.errors)")
  }

  @Test func argumentErrorsOfSeveralNodes() throws {
    var env = LocalProcessGroup.currentEnvironment()
    env["KAITIAN_TOKEN"] = nil
    env["KAITIAN_TOKEN_FILE"] = nil
    let cases: [([String], String)] = [
      (
        ["--nnodes", "2", "--node-rank", "1", "--master-addr", "h", "--job-id", "j"],
        "needs the job token"
      ),
      (["--nnodes", "2", "--node-rank", "1", "--master-addr", "h"], "needs --job-id"),
      (["--nnodes", "2", "--master-addr", "h", "--job-id", "j"], "needs --node-rank"),
      (["--nnodes", "2", "--node-rank", "0", "--job-id", "j"], "needs --master-addr"),
    ]
    for (arguments, expected) in cases {
      let child = try ChildProcess(
        "kaitian", ["run"] + arguments + ["--group", "cpu:1", "--", "true"], environment: env)
      #expect(child.wait(seconds: 20) == 64, "\(arguments)")
      #expect(child.errors.contains(expected), "\(arguments): \(child.errors)")
    }
    var slurm = env
    slurm["SLURM_NNODES"] = "2"
    slurm["SLURM_NODEID"] = "1"
    slurm["SLURM_JOB_ID"] = "77"
    slurm["SLURM_JOB_NODELIST"] = "n[1-2]"
    slurm["KAITIAN_TOKEN"] = Self.token
    slurm["PATH"] = "/usr/bin:/bin"  // no scontrol here
    let child = try ChildProcess(
      "kaitian", ["run", "--dry-run", "--group", "cpu:1", "--", "true"], environment: slurm)
    #expect(child.wait(seconds: 20) == 64)
    #expect(child.errors.contains("scontrol is not on PATH"), "\(child.errors)")
    let given = try ChildProcess(
      "kaitian",
      ["run", "--dry-run", "--master-addr", "n1", "--group", "cpu:1", "--", "true"],
      environment: slurm)
    #expect(given.wait(seconds: 20) == 0, "\(given.errors)")
    #expect(given.output.contains("job slurm-77: node 1 of 2"))
    #expect(given.output.contains("KAITIAN_STORE=n1:29400"))
  }

  @Test func moreDevicesThanExistIsRefused() throws {
    let child = try ChildProcess("kaitian", ["run", "--group", "cuda:999", "--", "true"])
    #expect(child.wait(seconds: 30) == 1)
    #expect(child.errors.contains("--group cuda:999: "), "\(child.errors)")
    #expect(child.errors.contains("--no-device-check"))
    let forced = try ChildProcess(
      "kaitian", ["run", "--no-device-check", "--group", "cuda:1", "--", "true"])
    #expect(forced.wait(seconds: 30) == 0, "\(forced.errors)")
  }

  // MARK: Network namespaces

  /// Runs `ip` with `arguments`; true when it exits 0.
  @discardableResult
  private static func ip(_ arguments: [String]) -> Bool {
    guard let child = try? ChildProcess("/usr/sbin/ip", arguments) else { return false }
    return child.wait(seconds: 10) == 0
  }

  /// Two network namespaces joined by a veth pair, 10.213.0.1 and 10.213.0.2; nil (with the
  /// reason) where they cannot be made: not root, no `ip`, or no CAP_NET_ADMIN in a container.
  private final class TwoHosts {
    let names: [String]
    let addresses = ["10.213.0.1", "10.213.0.2"]

    init() throws {
      let base = "kt\(getpid() % 100_000)"
      names = ["\(base)a", "\(base)b"]
      guard getuid() == 0, access("/usr/sbin/ip", X_OK) == 0 else {
        throw SpawnError(description: "needs root and /usr/sbin/ip")
      }
      guard MultiNodeJobTests.ip(["netns", "add", names[0]]) else {
        throw SpawnError(description: "ip netns add failed (no CAP_NET_ADMIN?)")
      }
      _ = MultiNodeJobTests.ip(["netns", "add", names[1]])
      let veth = ["\(base)x", "\(base)y"]
      let steps: [[String]] = [
        ["link", "add", veth[0], "type", "veth", "peer", "name", veth[1]],
        ["link", "set", veth[0], "netns", names[0]],
        ["link", "set", veth[1], "netns", names[1]],
        ["-n", names[0], "addr", "add", "\(addresses[0])/24", "dev", veth[0]],
        ["-n", names[1], "addr", "add", "\(addresses[1])/24", "dev", veth[1]],
        ["-n", names[0], "link", "set", veth[0], "up"],
        ["-n", names[1], "link", "set", veth[1], "up"],
        ["-n", names[0], "link", "set", "lo", "up"],
        ["-n", names[1], "link", "set", "lo", "up"],
      ]
      for step in steps where !MultiNodeJobTests.ip(step) {
        remove()
        throw SpawnError(description: "ip \(step.joined(separator: " ")) failed")
      }
    }

    /// Deleting a namespace deletes the veth end inside it, and with it the pair.
    func remove() {
      for name in names { MultiNodeJobTests.ip(["netns", "del", name]) }
    }
  }

  static let namespacesPossible: Bool = {
    guard getuid() == 0, access("/usr/sbin/ip", X_OK) == 0 else { return false }
    let probe = "ktprobe\(getpid() % 100_000)"
    guard ip(["netns", "add", probe]) else { return false }
    ip(["netns", "del", probe])
    return true
  }()

  @Test(
    "two hosts in network namespaces: engine collectives over TCP between them, shared memory inside",
    .enabled(if: namespacesPossible, "needs root and `ip netns add` (CAP_NET_ADMIN)"))
  func twoHostsInNetworkNamespaces() throws {
    let worker = ChildProcess.builtProduct("KaitianTestWorker")
    let (zero, one, addresses) = try runOnTwoHosts(
      job: "netns",
      command: [
        "/bin/sh", "-c", "KAITIAN_TEST_STORE=$KAITIAN_STORE exec \"$0\" matrix", worker,
      ])
    let errors = zero.errors + one.errors
    // Each rank: its host's other rank by shared memory, the other host's two by TCP.
    let meshLines = errors.split(separator: "\n").filter { $0.contains("connected: ") }
    #expect(meshLines.count == 4, "\(meshLines)")
    #expect(
      meshLines.allSatisfy { $0.contains("1 peers by shared memory, 2 by TCP") }, "\(meshLines)")
    // The launcher told the engine which address the other host reaches.
    #expect(one.errors.contains("listening on \(addresses[1])"), "\(meshLines)")
    #expect(zero.errors.contains("listening on \(addresses[0])"), "\(meshLines)")
  }

  /// The repository's venv python and the C library it loads, when both are there.
  static let python: (interpreter: String, library: String)? = {
    let root = String(#filePath.dropLast("/Tests/KaitianTests/MultiNodeTests.swift".count))
    let interpreter = root + "/.venv/bin/python"
    let library = ChildProcess.builtProduct("libKaitianC.so")
    guard access(interpreter, X_OK) == 0, access(library, R_OK) == 0 else { return nil }
    return (interpreter, library)
  }()

  static let pythonScript = """
    import os, sys
    sys.path.insert(0, os.environ["KAITIAN_TEST_PYTHON_DIR"])
    from datetime import timedelta
    import torch, torch.distributed as dist
    import kaitian  # registers the backend
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("kaitian", rank=rank, world_size=size, timeout=timedelta(seconds=60))
    t = torch.arange(1000, dtype=torch.float32) + rank
    dist.all_reduce(t)
    want = torch.arange(1000, dtype=torch.float32) * size + size * (size - 1) / 2
    assert torch.equal(t, want), (t[:4], want[:4])
    print(f"allreduce ok rank={rank} host={os.environ['KAITIAN_HOST_ID']}", flush=True)
    dist.destroy_process_group()
    """

  @Test(
    "two hosts in network namespaces: torch.distributed with backend kaitian, torch's store on node 0",
    .enabled(if: namespacesPossible, "needs root and `ip netns add` (CAP_NET_ADMIN)"),
    .enabled(if: python != nil, "needs .venv/bin/python and a built libKaitianC.so"))
  func torchAllReduceOnTwoHostsInNetworkNamespaces() throws {
    let python = try #require(Self.python)
    let root = String(#filePath.dropLast("/Tests/KaitianTests/MultiNodeTests.swift".count))
    let (zero, one, _) = try runOnTwoHosts(
      job: "netns-torch", command: [python.interpreter, "-c", Self.pythonScript],
      environment: [
        "KAITIAN_LIBRARY": python.library, "KAITIAN_TEST_PYTHON_DIR": root + "/python",
      ])
    let lines = (zero.output + one.output).split(separator: "\n").filter {
      $0.contains("allreduce ok")
    }
    #expect(lines.count == 4, "\(zero.errors.suffix(2000)) \(one.errors.suffix(2000))")
    #expect(zero.output.contains("allreduce ok rank=1 host=test-host-0"))
    #expect(one.output.contains("allreduce ok rank=3 host=test-host-1"))
  }

  /// Node 0 and node 1 of a job with two CPU ranks each, in two fresh network namespaces;
  /// expects both launchers to exit 0 within the time, and removes the namespaces.
  private func runOnTwoHosts(
    job: String, command: [String], environment: [String: String] = [:]
  ) throws -> (zero: ChildProcess, one: ChildProcess, addresses: [String]) {
    let hosts = try TwoHosts()
    defer { hosts.remove() }
    var environment = environment
    environment["KAITIAN_DEBUG"] = "INFO"
    let master = ["--master-addr", hosts.addresses[0]]
    let zero = try node(
      0, of: 2, port: 29_400, job: job, groups: ["cpu:2"], extra: master, command: command,
      environment: environment, wrapper: ["/usr/sbin/ip", "netns", "exec", hosts.names[0]])
    let one = try node(
      1, of: 2, port: 29_400, job: job, groups: ["cpu:2"], extra: master, command: command,
      environment: environment, wrapper: ["/usr/sbin/ip", "netns", "exec", hosts.names[1]])
    // A launcher killed by ChildProcess's SIGKILL would leave its workers behind.
    defer {
      for launcher in [zero, one] where !launcher.poll() {
        launcher.signal(SIGTERM)
        _ = launcher.wait(seconds: 10)
      }
    }
    #expect(zero.wait(seconds: 55) == 0, "node 0: \(zero.errors.suffix(3000))")
    #expect(one.wait(seconds: 10) == 0, "node 1: \(one.errors.suffix(3000))")
    return (zero, one, hosts.addresses)
  }
}
