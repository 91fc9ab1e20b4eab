import ArgumentParser
import Glibc
import Testing

@testable import KaitianCLI
@testable import KaitianDevices
@testable import KaitianLaunch
@testable import KaitianOutput

@Suite("kaitian run: arguments")
struct RunArgumentTests {
  /// The validation message for `arguments`, or nil when they are accepted.
  private func problem(_ arguments: [String]) -> String? {
    do {
      _ = try RunCommand.parse(arguments)
      return nil
    } catch {
      return RunCommand.message(for: error)
    }
  }

  @Test func acceptsGroupsPrefixesAndACommand() throws {
    let command = try RunCommand.parse([
      "--group", "cpu:1:cpu=1.0", "--group", "cpu-slow:2:cpu=0.3:cpus=0",
      "--prefix", "cpu-slow=nice -n 5", "--", "python", "train.py", "--epochs", "2",
    ])
    #expect(command.command == ["python", "train.py", "--epochs", "2"])
    let groups = try command.parsedGroups()
    #expect(groups.map(\.kind) == ["cpu", "cpu-slow"])
    #expect(groups[1].count == 2 && groups[1].cpuFraction == 0.3 && groups[1].cpuList == "0")
    #expect(try command.parsedPrefixes() == ["cpu-slow": ["nice", "-n", "5"]])
  }

  @Test func rejectsBadGroups() {
    #expect(
      problem(["--group", "CUDA:2", "--", "x"])?.contains("unknown device kind 'CUDA'") == true)
    #expect(problem(["--group", "9gpu:2", "--", "x"])?.contains("unknown device kind") == true)
    #expect(problem(["--group", "cuda", "--", "x"])?.contains("expected KIND:COUNT") == true)
    #expect(problem(["--group", "cpu:0", "--", "x"])?.contains("at least 1") == true)
    #expect(problem(["--group", "cpu:two", "--", "x"])?.contains("at least 1") == true)
    #expect(problem(["--group", "cpu:1:cpu=0", "--", "x"])?.contains("(0, 64]") == true)
    #expect(problem(["--group", "cpu:1:cpu=65", "--", "x"])?.contains("(0, 64]") == true)
    #expect(problem(["--group", "cpu:1:cpu=abc", "--", "x"])?.contains("(0, 64]") == true)
    #expect(problem(["--group", "cpu:1:gpu=1", "--", "x"])?.contains("unknown key 'gpu'") == true)
    #expect(problem(["--group", "cpu:1:cpus=9999", "--", "x"])?.contains("this host has") == true)
    #expect(problem(["--group", "cpu:1:devices=0", "--", "x"])?.contains("visibility") == true)
    #expect(
      problem(["--group", "cuda:3:devices=0,1", "--", "x"])?.contains("lists only 2") == true)
    #expect(problem(["--group", "cuda:2:devices=0,0", "--", "x"])?.contains("distinct") == true)
  }

  @Test func rejectsMissingPiecesAndBadPrefixes() {
    #expect(problem(["--", "x"])?.contains("at least one --group") == true)
    #expect(problem(["--group", "cpu:1"])?.contains("no command given") == true)
    #expect(
      problem(["--group", "cpu:1", "--prefix", "mlu=conda run", "--", "x"])?.contains(
        "no --group has kind 'mlu'") == true)
    #expect(
      problem(["--group", "cpu:1", "--prefix", "cpu='open", "--", "x"])?.contains("unterminated")
        == true)
    #expect(problem(["--group", "cpu:1", "--json", "--", "x"])?.contains("--dry-run") == true)
    #expect(
      problem(["--group", "cpu:1", "--job-id", "a/b", "--", "x"])?.contains("--job-id") == true)
  }

  @Test func splitsPrefixesLikeAShell() throws {
    #expect(try ShellWords.split("conda run -n 'my env'") == ["conda", "run", "-n", "my env"])
    #expect(
      try ShellWords.split(#"docker run -e "A=b c" img\ x"#) == [
        "docker", "run", "-e", "A=b c", "img x",
      ])
    #expect(try ShellWords.split("  a   ''  b ") == ["a", "", "b"])
  }

  @Test func planNumbersRanksGroupByGroupAndSetsVisibility() throws {
    let command = try RunCommand.parse([
      "--group", "cpu:1", "--group", "cuda:2:devices=2,3", "--prefix", "cuda=conda run -n gpu",
      "--job-id", "j1", "--", "python", "t.py",
    ])
    let job = try command.describedJob()
    let plan = RunPlan(
      groups: job.groups, command: job.command, jobID: "j1", logDirectory: "logs",
      store: "127.0.0.1:1", masterPort: "2", taskset: "taskset")
    #expect(plan.ranks.map(\.kind) == ["cpu", "cuda", "cuda"])
    let last = Dictionary(uniqueKeysWithValues: plan.ranks[2].environment)
    #expect(last["RANK"] == "2" && last["WORLD_SIZE"] == "3" && last["KAITIAN_GROUP"] == "1")
    #expect(last["KAITIAN_GROUP_RANK"] == "1" && last["CUDA_VISIBLE_DEVICES"] == "2,3")
    #expect(plan.ranks[2].command == ["conda", "run", "-n", "gpu", "python", "t.py"])
    let rank = try JSON.parse(plan.json())["ranks"]?.arrayValue?.last
    #expect(rank?["environment"]?["CUDA_VISIBLE_DEVICES"]?.stringValue == "2,3")
  }
}

/// The real tool, started as a process, running real workers.
@Suite("kaitian run: jobs", .serialized)
struct RunJobTests {
  @Test func runsEveryRankWithItsEnvironmentAndPrefixedOutput() throws {
    let job = try KaitianProcess([
      "--group", "cpu:2", "--group", "cpu-slow:1", "--",
      "/bin/sh", "-c",
      "echo rank $RANK of $WORLD_SIZE kind $KAITIAN_DEVICE_KIND group $KAITIAN_GROUP store $KAITIAN_STORE; echo oops >&2",
    ])
    #expect(job.wait(seconds: 20) == 0)
    let output = job.output
    #expect(output.contains("[rank 0 cpu] rank 0 of 3 kind cpu group 0 store 127.0.0.1:"))
    #expect(output.contains("[rank 1 cpu] rank 1 of 3 kind cpu group 0"))
    #expect(output.contains("[rank 2 cpu-slow] rank 2 of 3 kind cpu-slow group 1"))
    #expect(job.errors.contains("[rank 2 cpu-slow] oops"))
    #expect(job.errors.contains("rank 1 cpu started"))
    #expect(job.errors.contains("summary"))
    #expect(job.log(rank: 2).contains("rank 2 of 3 kind cpu-slow"))
    #expect(job.log(rank: 2).contains("oops"))
  }

  /// Rank logs are the owner's only; a log directory of another user is refused (the test
  /// runs as root in CI, and gives the directory to nobody; as another user it is skipped).
  @Test func logsAreTheOwnersAndAStrangersLogDirectoryIsRefused() throws {
    let job = try KaitianProcess(["--group", "cpu:1", "--", "/bin/true"])
    #expect(job.wait(seconds: 20) == 0)
    var status = stat()
    #expect(stat(job.logPath(rank: 0), &status) == 0)
    #expect(status.st_mode & 0o777 == 0o600, "mode \(String(status.st_mode & 0o777, radix: 8))")
    guard geteuid() == 0 else { return }
    var template = Array("/tmp/kaitian-foreign-logs-XXXXXX".utf8CString)
    let foreign = String(cString: mkdtemp(&template))
    defer { rmdir(foreign) }
    #expect(chown(foreign, 65534, 65534) == 0)
    let refused = try ChildProcess(
      "kaitian", ["run", "--log-dir", foreign, "--group", "cpu:1", "--", "/bin/true"])
    #expect(refused.wait(seconds: 20) != 0)
    #expect(refused.errors.contains("belongs to user 65534, not to you"), "\(refused.errors)")
  }

  @Test func aFailingRankStopsTheOthers() throws {
    let marker = "kaitian-fail-marker-\(getpid())"
    let started = ProcessJob.now()
    let job = try KaitianProcess([
      "--group", "cpu:3", "--grace-seconds", "2", "--",
      "/bin/sh", "-c", "if [ $RANK = 1 ]; then exit 7; fi; sleep 30 # \(marker)",
    ])
    #expect(job.wait(seconds: 15) == 1)
    #expect(ProcessJob.now() - started < 10)
    #expect(job.errors.contains("rank 1 cpu exited with status 7"))
    #expect(KaitianProcess.noProcessMatches(marker))
  }

  /// The others get a moment to end by themselves after a failure, so the line in which a
  /// survivor says what it saw is not cut off by SIGTERM. Here it comes 300 ms after the failure
  /// (rank 1 fails at once; rank 0 notices and reports it by itself).
  @Test func survivorsReportTheFailureBeforeTheyAreStopped() throws {
    let job = try KaitianProcess([
      "--group", "cpu:2", "--grace-seconds", "2", "--",
      "/bin/sh", "-c",
      "if [ $RANK = 1 ]; then exit 7; fi; sleep 0.3; echo saw rank 1 fail >&2; exit 3",
    ])
    #expect(job.wait(seconds: 15) == 1)
    #expect(job.errors.contains("rank 1 cpu exited with status 7"), "\(job.errors)")
    #expect(job.log(rank: 0).contains("saw rank 1 fail"), "\(job.log(rank: 0))")
  }

  @Test func interruptStopsEverything() throws {
    let marker = "kaitian-int-marker-\(getpid())"
    let job = try KaitianProcess([
      "--group", "cpu:2", "--group", "cpu-b:1", "--grace-seconds", "2", "--",
      "/bin/sh", "-c", "echo ready; sleep 30 # \(marker)",
    ])
    #expect(job.waitForOutput("ready", count: 3, seconds: 10))
    kill(job.pid, SIGINT)
    #expect(job.wait(seconds: 10) == 130)
    #expect(job.errors.contains("SIGINT received"))
    #expect(KaitianProcess.noProcessMatches(marker))
  }

  /// A launcher killed with SIGKILL cannot stop its workers itself: their guards do, when
  /// the lifeline pipe the launcher held closes (see LaunchGuard).
  @Test func workersEndWhenTheLauncherIsKilled() throws {
    let marker = "kaitian-orphan-marker-\(getpid())"
    let job = try KaitianProcess([
      "--group", "cpu:2", "--grace-seconds", "1", "--",
      "/bin/sh", "-c", "echo ready; sleep 30 # \(marker)",
    ])
    #expect(job.waitForOutput("ready", count: 2, seconds: 10))
    #expect(!KaitianProcess.noProcessMatches(marker), "the workers should be running")
    kill(job.pid, SIGKILL)
    _ = job.wait(seconds: 10)
    let deadline = ProcessJob.now() + 5
    while !KaitianProcess.noProcessMatches(marker) && ProcessJob.now() < deadline {
      usleep(100_000)
    }
    #expect(KaitianProcess.noProcessMatches(marker))
  }

  /// cgroup CPU quotas need root and a cpu controller: v2's cpu.max or v1's cpu.cfs_quota_us.
  static let cgroupsWritable =
    getuid() == 0
    && (DeviceProbe.readFile("/sys/fs/cgroup/cgroup.controllers").split(separator: " ")
      .contains { $0.hasPrefix("cpu") && $0.count == 3 }
      || access("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", W_OK) == 0)

  @Test(
    "a worker limited to 0.2 CPU gets less CPU than one with a whole CPU",
    .enabled(if: cgroupsWritable, "needs root and a writable cgroup cpu controller"))
  func cpuQuotaSlowsAWorker() throws {
    let job = try KaitianProcess([
      "--group", "cpu:1:cpu=1.0", "--group", "cpu-slow:1:cpu=0.2", "--",
      "/bin/sh", "-c", "timeout 1 sh -c 'while :; do :; done'; true",
    ])
    #expect(job.wait(seconds: 15) == 0)
    // Summary lines: "  rank 0 cpu       exited with status 0  1.01 s  cpu 0.99 s".
    let times = job.errors.split(separator: "\n").filter { $0.contains(" s  cpu ") }.map {
      line -> (wall: Double, cpu: Double) in
      let words = line.split(separator: " ")
      return (Double(words[words.count - 5]) ?? 0, Double(words[words.count - 2]) ?? 0)
    }
    try #require(times.count == 2, "summary: \(job.errors)")
    let (full, limited) = (times[0], times[1])
    // The quota caps the limited worker near 0.2 of its wall time however idle the machine is.
    #expect(limited.cpu < 0.4 * limited.wall, "limited: \(limited.cpu) s CPU in \(limited.wall) s")
    // The comparison means something only when the machine left the full worker room to run
    // (the other test suites compete for the same two cores).
    if full.cpu > 0.5 * full.wall {
      #expect(limited.cpu < full.cpu, "full \(full.cpu) s, limited \(limited.cpu) s")
    }
    #expect(job.errors.contains("cgroups in "))
  }
}
