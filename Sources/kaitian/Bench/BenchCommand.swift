import ArgumentParser
import Glibc
import Kaitian
import KaitianAuth
import KaitianLaunch
import KaitianOutput
import KaitianStore

/// `kaitian bench`: an nccl-tests-style benchmark that starts its own ranks as local processes.
struct BenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench",
    abstract: "Measure a collective's time and bandwidth over a range of sizes.",
    discussion: """
      Starts --ranks processes on this machine with an embedded store, runs the collective \
      --warmup times, then times --iters calls per size, out-of-place and in-place. Time is the \
      mean per call of the slowest rank; algbw = size / time; busbw = algbw x the collective's \
      bus factor (2(n-1)/n for allreduce), as in nccl-tests. --check verifies every element \
      against a reference and counts wrong ones.

      Example: kaitian bench allreduce --ranks 2 --min-bytes 8 --max-bytes 64M
      """)

  @Argument(
    help: "allreduce, reduce, broadcast, allgather, reduce_scatter, alltoall, gather, scatter")
  var collective: BenchCollective

  @Option(help: "Number of ranks (local processes).")
  var ranks = 2

  @Option(help: "Smallest message size, e.g. 8, 1K, 4M.")
  var minBytes = ByteCount(8)

  @Option(help: "Largest message size.")
  var maxBytes = ByteCount(64 << 20)

  @Option(help: "Multiply the size by this between steps.")
  var stepFactor = 2

  @Option(help: "float32, float16, bfloat16, float64, int8, uint8, int32, int64.")
  var dtype = "float32"

  @Option(help: "sum, prod, max, min, avg (reducing collectives).")
  var op = "sum"

  @Option(help: "Root rank (rooted collectives).")
  var root = 0

  @Option(help: "auto (shared memory on one host), shm, or tcp.")
  var transport = CommunicatorOptions.Transport.auto

  @Option(help: "Timed calls per size.")
  var iters = 20

  @Option(help: "Untimed calls per size before timing.")
  var warmup = 5

  @Option(
    help: """
      core: pin rank r to the r-th CPU this command may use, as mpirun --bind-to core does, so \
      that two ranks never share a core by chance (small messages then take several times as \
      long); none: leave placement to the scheduler.
      """)
  var bind = BenchBinding.core

  @Flag(help: "Verify results against a reference (an extra untimed call per size and mode).")
  var check = false

  @Flag(help: "Print one JSON object per size instead of the table.")
  var json = false

  @Option(help: .hidden) var workerRank: Int?
  @Option(help: .hidden) var storeAddress: String?

  var dataType: DataType { DataType(name: dtype)! }
  var reduceOp: ReduceOp { ReduceOp(name: op)! }

  func validate() throws {
    guard DataType(name: dtype) != nil else {
      throw ValidationError(
        "unknown --dtype \(dtype); use one of \(DataType.allCases.map(\.description).joined(separator: ", "))"
      )
    }
    guard ReduceOp(name: op) != nil else {
      throw ValidationError("unknown --op \(op); use sum, prod, max, min or avg")
    }
    guard ranks >= 1 && ranks <= 256 else { throw ValidationError("--ranks must be 1...256") }
    guard root >= 0 && root < ranks else { throw ValidationError("--root must be below --ranks") }
    guard minBytes.value <= maxBytes.value else {
      throw ValidationError("--min-bytes \(minBytes) is larger than --max-bytes \(maxBytes)")
    }
    guard stepFactor >= 2 else { throw ValidationError("--step-factor must be at least 2") }
    guard iters >= 1, warmup >= 0 else { throw ValidationError("--iters >= 1 and --warmup >= 0") }
  }

  func run() throws {
    if let workerRank, let storeAddress {
      try BenchWorker(options: self, rank: workerRank, storeAddress: storeAddress).run()
    } else {
      try launch()
    }
  }

  /// Starts the store and the ranks, waits for them, and fails if any rank failed.
  private func launch() throws {
    let token = JobToken.generate()
    let server = StoreServer(host: "127.0.0.1", port: 0, token: token)
    let port = try server.start()
    defer { server.stop() }
    let arguments = Array(CommandLine.arguments.dropFirst())
    let members = (0..<ranks).map { rank in
      LocalProcessGroup.Member(
        name: "rank \(rank)",
        arguments: arguments + [
          "--worker-rank", "\(rank)", "--store-address", "127.0.0.1:\(port)",
        ],
        environment: [JobToken.environmentVariable: token.stringValue])
    }
    let kaitian = currentExecutablePath()
    var supervisor = LocalProcessGroup(executable: kaitian)
    supervisor.guardExecutable = kaitian
    let outcome = try supervisor.run(members)
    if let failure = outcome.firstFailure {
      throw LaunchError("kaitian bench: \(failure); see its messages above")
    }
  }
}

extension CommunicatorOptions.Transport: ExpressibleByArgument {}

/// Where `kaitian bench` places its ranks.
enum BenchBinding: String, ExpressibleByArgument, CaseIterable {
  case core
  case none
}
