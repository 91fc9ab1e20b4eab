import CKaitianShim
import Glibc
import Kaitian
import KaitianAuth
import KaitianLaunch
import KaitianPOSIX
import KaitianStore
import KaitianVerification

/// One rank of `kaitian bench`: joins the communicator, measures every size, and on rank 0
/// prints the results.
struct BenchWorker {
  let options: BenchCommand
  let rank: Int
  let storeAddress: String

  struct Timing {
    var microseconds: Double
    var wrong: Int
  }

  func run() throws {
    // Before the communicator starts its threads, which inherit the binding.
    if options.bind == .core { try bindToCore() }
    let token = try JobToken.requiredFromEnvironment()
    let store = try StoreClient.connect(
      address: storeAddress, token: token, clientName: "rank \(rank)")
    var communicatorOptions = try CommunicatorOptions.fromEnvironment()
    communicatorOptions.transport = options.transport
    let comm = try Communicator(
      store: store, rank: rank, size: options.ranks, token: token, options: communicatorOptions,
      advertisedHostHint: store.localAddress.host)
    defer { comm.destroy() }
    let report = BenchReport(options: options)
    if rank == 0 { report.printHeader() }
    var bytes = options.minBytes.value
    while bytes <= options.maxBytes.value {
      let count = options.collective.count(
        bytes: bytes, ranks: options.ranks, dataType: options.dataType)
      let outOfPlace = try measure(comm, count: count, inPlace: false)
      let inPlace =
        options.collective.supportsInPlace ? try measure(comm, count: count, inPlace: true) : nil
      if rank == 0 {
        report.printRow(bytes: bytes, count: count, outOfPlace: outOfPlace, inPlace: inPlace)
      }
      if bytes == 0 { break }
      bytes *= options.stepFactor
    }
    if rank == 0 { report.printFooter() }
  }

  /// Times one mode of one size; returns the slowest rank's mean time per call and the number
  /// of wrong elements over all ranks.
  private func measure(_ comm: Communicator, count: Int, inPlace: Bool) throws -> Timing {
    let collective = options.collective
    let dataType = options.dataType
    let (sendCount, receiveCount) = collective.bufferCounts(count: count, ranks: options.ranks)
    let input: ElementBuffer
    let output: ElementBuffer
    let inputOffset: Int
    let outputOffset: Int
    if inPlace {
      input = ElementBuffer(dataType, count: max(sendCount, receiveCount))
      output = input
      inputOffset = collective.inPlaceInputOffset(count: count, rank: rank)
      outputOffset = collective.inPlaceOutputOffset(count: count, rank: rank)
    } else {
      input = ElementBuffer(dataType, count: sendCount)
      output = ElementBuffer(dataType, count: receiveCount)
      inputOffset = 0
      outputOffset = 0
    }
    let start = { () throws(KaitianError) -> Work in
      try collective.start(
        comm, input: input.raw + inputOffset * dataType.size,
        output: output.raw + outputOffset * dataType.size, count: count, dataType: dataType,
        op: options.reduceOp, root: options.root)
    }
    for _ in 0..<options.warmup { try start().wait() }
    try comm.barrier().wait()
    let began = kt_monotonic_ns()
    for _ in 0..<options.iters { try start().wait() }
    let seconds = Double(kt_monotonic_ns() - began) / 1e9 / Double(options.iters)

    var wrong = 0
    if options.check {
      for index in 0..<sendCount {
        input[inputOffset + index] = Reference.value(
          rank: rank, index: index, dataType: dataType, op: options.reduceOp)
      }
      try start().wait()
      for index in 0..<receiveCount {
        if let expected = collective.expected(
          index: index, rank: rank, ranks: options.ranks, count: count, dataType: dataType,
          op: options.reduceOp, root: options.root), output[outputOffset + index] != expected
        {
          wrong += 1
        }
      }
    }
    return Timing(
      microseconds: try combine(comm, seconds, .max, as: Double.self) * 1e6,
      wrong: Int(try combine(comm, Int64(wrong), .sum, as: Int64.self)))
  }

  /// Pins this rank to the (rank mod n)-th of the n CPUs it may use (`--bind core`).
  private func bindToCore() throws {
    var cpus = [Int32](repeating: 0, count: 1024)
    let count = Int(kt_allowed_cpus(&cpus, Int32(cpus.count)))
    guard count > 0 else {
      throw LaunchError(
        "rank \(rank): cannot read its allowed CPUs: \(errnoText(-Int32(count)))"
      )
    }
    let cpu = cpus[rank % min(count, cpus.count)]
    let status = kt_pin_to_cpu(cpu)
    guard status == 0 else {
      throw LaunchError(
        "rank \(rank): cannot pin itself to CPU \(cpu) (--bind core): "
          + "\(errnoText(status)); use --bind none")
    }
  }

  /// Reduces one value over all ranks with the communicator itself.
  private func combine<Value: BitwiseCopyable>(
    _ comm: Communicator, _ value: Value, _ op: ReduceOp, as type: Value.Type
  ) throws -> Value {
    var local = value
    var result = value
    let dataType: DataType = type == Double.self ? .float64 : .int64
    try withUnsafeMutableBytes(of: &result) { output in
      try withUnsafeBytes(of: &local) { input in
        try comm.allReduce(
          input.baseAddress!, into: output.baseAddress!, count: 1, dataType: dataType, op: op
        ).wait()
      }
    }
    return result
  }
}
