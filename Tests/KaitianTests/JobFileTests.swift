import ArgumentParser
import Glibc
import Testing

@testable import KaitianCLI
@testable import KaitianLaunch

@Suite("kaitian run: job files")
struct JobFileTests {
  static let good = """
    # Two vendors, each in its own environment.
    command = ["python", "train.py"]
    job-id = "hetero-1"
    log-dir = "logs/hetero"
    grace-seconds = 2.5

    [env]
    OMP_NUM_THREADS = 4
    NCCL_DEBUG = "WARN"

    [[group]]
    kind = "cuda"
    devices = [0, 1]
    prefix = ["docker", "run", "--rm", "--gpus", "all", "img:1"]

    [[group]]
    kind = "cpu-slow"
    count = 2
    cpu = 0.5
    cpus = "0"
    command = ["python", "slow.py"]
    [group.env]
    NCCL_DEBUG = "INFO"
    """

  private func parse(_ text: String, commandOnCommandLine: Bool = false) throws(JobFileError)
    -> JobFile
  {
    try JobFile(
      text: text, path: "job.toml", hostCPUs: 4, commandOnCommandLine: commandOnCommandLine)
  }

  /// The error's text for a bad file; fails the test when the file is accepted.
  private func problem(_ text: String) -> String {
    do {
      _ = try parse(text)
      Issue.record("accepted: \(text)")
      return ""
    } catch {
      return error.description
    }
  }

  @Test func readsEveryKey() throws {
    let file = try parse(Self.good)
    #expect(file.command == ["python", "train.py"])
    #expect(file.jobID == "hetero-1" && file.logDirectory == "logs/hetero")
    #expect(file.graceSeconds == 2.5)
    #expect(file.environment == ["OMP_NUM_THREADS": "4", "NCCL_DEBUG": "WARN"])
    #expect(file.groups.count == 2)
    let cuda = file.groups[0]
    #expect(cuda.kind == "cuda" && cuda.count == 2 && cuda.devices == [0, 1])
    #expect(cuda.prefix == ["docker", "run", "--rm", "--gpus", "all", "img:1"])
    let slow = file.groups[1]
    #expect(slow.count == 2 && slow.cpuFraction == 0.5 && slow.cpuList == "0")
    #expect(slow.command == ["python", "slow.py"] && slow.environment == ["NCCL_DEBUG": "INFO"])
    #expect(file.groupLines == [11, 16])
  }

  @Test func planUsesGroupCommandsPrefixesAndEnvironment() throws {
    let file = try parse(Self.good)
    let plan = RunPlan(
      groups: file.groups, command: file.command ?? [], environment: file.environment,
      jobID: "j", logDirectory: "l", store: "s:1", masterPort: "2", taskset: "taskset")
    #expect(plan.ranks.count == 4)
    #expect(
      plan.ranks[0].command == [
        "docker", "run", "--rm", "--gpus", "all", "img:1", "python", "train.py",
      ])
    #expect(plan.ranks[3].command == ["taskset", "-c", "0", "python", "slow.py"])
    let first = Dictionary(uniqueKeysWithValues: plan.ranks[0].environment)
    let last = Dictionary(uniqueKeysWithValues: plan.ranks[3].environment)
    #expect(first["NCCL_DEBUG"] == "WARN" && last["NCCL_DEBUG"] == "INFO")
    #expect(first["CUDA_VISIBLE_DEVICES"] == "0,1" && last["OMP_NUM_THREADS"] == "4")
  }

  @Test func emulatedSpeedReachesTheWorkersAndIsChecked() throws {
    let text = "command = [\"x\"]\n[[group]]\nkind = \"cpu-slow\"\ncount = 2\nspeed = 0.25\n"
    let file = try parse(text)
    #expect(file.groups[0].emulatedSpeed == 0.25)
    let plan = RunPlan(
      groups: file.groups, command: ["x"], jobID: "j", logDirectory: "l", store: "s:1",
      masterPort: "2", taskset: "taskset")
    let environment = Dictionary(uniqueKeysWithValues: plan.ranks[1].environment)
    #expect(environment["KAITIAN_EMULATED_SPEED"] == "0.25")
    #expect(plan.describe().contains("EMULATED device speed 0.25"))
    let flag = try GroupSpec(parsing: "cuda:2:speed=0.5", hostCPUs: 2)
    #expect(flag.emulatedSpeed == 0.5 && flag.count == 2)
    #expect(throws: (any Error).self) { try GroupSpec(parsing: "cpu:1:speed=2", hostCPUs: 2) }
    #expect(throws: (any Error).self) { try GroupSpec(parsing: "cpu:1:speed=fast", hostCPUs: 2) }
    let tooFast = "command = [\"x\"]\n[[group]]\nkind = \"cpu\"\ncount = 1\nspeed = 1.5\n"
    #expect(problem(tooFast).hasPrefix("job.toml:5: key 'speed' of [[group]] 1: speed=1.5"))
  }

  @Test func syntaxErrorsCarryLineAndColumn() {
    let text = "command = [\"x\"]\n[[group]]\nkind = \"cpu\"\ncount = = 2\n"
    #expect(problem(text).hasPrefix("job.toml:4:"), "\(problem(text))")
    #expect(problem(text).contains("not valid TOML"))
  }

  @Test func unknownKeysAreErrorsAtTheirLine() {
    let typo = "command = [\"x\"]\n\n[[group]]\nkind = \"cpu\"\ndevcies = [0]\n"
    #expect(
      problem(typo).hasPrefix("job.toml:5: key 'devcies' of [[group]] 1: unknown key"),
      "\(problem(typo))")
    let top = "comand = [\"x\"]\n[[group]]\nkind = \"cpu\"\ncount = 1\n"
    #expect(problem(top).hasPrefix("job.toml:1: key 'comand': unknown key"), "\(problem(top))")
    let table = "command = [\"x\"]\n[envs]\nA = \"1\"\n[[group]]\nkind = \"cpu\"\ncount = 1\n"
    #expect(problem(table).hasPrefix("job.toml:2: key 'envs'"), "\(problem(table))")
  }

  @Test func semanticErrorsNameTheLineAndKey() {
    let head = "command = [\"x\"]\n[[group]]\nkind = \"cpu\"\ncount = 1\n[[group]]\n"
    let cases: [(String, String)] = [
      (
        "kind = \"CUDA\"\ncount = 1\n", "job.toml:6: key 'kind' of [[group]] 2: unknown device kind"
      ),
      ("kind = \"cpu\"\ncount = 0\n", "job.toml:7: key 'count' of [[group]] 2: the worker count"),
      (
        "kind = \"cpu\"\ncount = \"2\"\n", "job.toml:7: key 'count' of [[group]] 2: must be a whole"
      ),
      ("kind = \"cpu\"\ncount = 1\ncpu = 99\n", "job.toml:8: key 'cpu' of [[group]] 2: cpu=99"),
      ("kind = \"cpu\"\ncount = 1\ncpus = \"7\"\n", "job.toml:8: key 'cpus' of [[group]] 2:"),
      (
        "kind = \"cuda\"\ncount = 3\ndevices = [0, 1]\n",
        "job.toml:8: key 'devices' of [[group]] 2: 3 workers but devices= lists only 2"
      ),
      ("kind = \"cpu\"\ncount = 1\nprefix = \"conda run\"\n", "job.toml:8: key 'prefix'"),
      ("count = 1\n", "job.toml:5: [[group]] 2: no kind"),
      ("kind = \"cpu\"\n", "job.toml:5: [[group]] 2: no count"),
      (
        "kind = \"cpu\"\ncount = 1\n[group.env]\nRANK = \"3\"\n",
        "job.toml:9: key 'RANK' of [group.env] in [[group]] 2: kaitian run sets RANK"
      ),
      (
        "kind = \"cpu\"\ncount = 1\n[group.env]\nA = 1.5\n",
        "job.toml:9: key 'A' of [group.env] in [[group]] 2: must be a string or an integer"
      ),
    ]
    for (tail, expected) in cases {
      let message = problem(head + tail)
      #expect(message.hasPrefix(expected), "\(tail): \(message)")
    }
  }

  @Test func missingGroupsOrCommandsAreErrors() throws {
    #expect(problem("command = [\"x\"]\n").contains("no [[group]]"))
    #expect(problem("command = [\"x\"]\ngroup = 3\n").hasPrefix("job.toml:2: key 'group'"))
    let noCommand = "[[group]]\nkind = \"cpu\"\ncount = 1\n"
    #expect(problem(noCommand).hasPrefix("job.toml:1: [[group]] 1: this group has no command"))
    // Words after -- are the command when the file has none.
    #expect(try parse(noCommand, commandOnCommandLine: true).groups.count == 1)
    #expect(
      problem("job-id = \"a/b\"\n" + noCommand).hasPrefix("job.toml:1: key 'job-id': use 1 to 64"))
    #expect(
      problem("grace-seconds = -1\n" + noCommand).hasPrefix("job.toml:1: key 'grace-seconds'"))
  }

  @Test func theCommandLineUsesTheFile() throws {
    let path = "/tmp/kaitian-jobfile-\(getpid()).toml"
    let file = try #require(fopen(path, "w"))
    fputs(Self.good, file)
    fclose(file)
    defer { unlink(path) }
    let command = try RunCommand.parse([
      "--job-file", path, "--job-id", "mine", "--", "--epochs", "2",
    ])
    let job = try command.describedJob()
    #expect(job.jobID == "mine" && job.logDirectory == "logs/hetero" && job.graceSeconds == 2.5)
    #expect(job.command == ["python", "train.py", "--epochs", "2"])
    #expect(job.groups[1].command == ["python", "slow.py", "--epochs", "2"])
    #expect(job.labels == ["\(path):11: [[group]] 1", "\(path):16: [[group]] 2"])
    #expect(throws: (any Error).self) {
      try RunCommand.parse(["--job-file", path, "--group", "cpu:1"])
    }
    let missing = "/tmp/kaitian-no-such-\(getpid()).toml"
    do {
      _ = try RunCommand.parse(["--job-file", missing])
      Issue.record("a missing job file was accepted")
    } catch {
      #expect(RunCommand.message(for: error).contains("\(missing): cannot read the job file"))
    }
  }
}
