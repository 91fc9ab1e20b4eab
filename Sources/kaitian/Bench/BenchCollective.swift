import ArgumentParser
import Kaitian
import KaitianVerification

/// The collectives `kaitian bench` measures, with nccl-tests' conventions for what "size" means
/// and how bus bandwidth is derived from it.
enum BenchCollective: String, ExpressibleByArgument, CaseIterable {
  case allreduce
  case reduce
  case broadcast
  case allgather
  case reduceScatter = "reduce_scatter"
  case alltoall
  case gather
  case scatter

  init?(argument: String) {
    self.init(rawValue: String(argument.lowercased().map { $0 == "-" ? "_" : $0 }))
  }

  var usesReduceOp: Bool { [.allreduce, .reduce, .reduceScatter].contains(self) }
  var usesRoot: Bool { [.reduce, .broadcast, .gather, .scatter].contains(self) }
  var supportsInPlace: Bool { self != .alltoall }

  /// busbw = algbw * factor: the share of the data each link must carry, so numbers compare
  /// across rank counts (nccl-tests' PERFORMANCE.md).
  func busBandwidthFactor(ranks: Int) -> Double {
    let n = Double(ranks)
    switch self {
    case .allreduce: return ranks > 1 ? 2 * (n - 1) / n : 0
    case .reduce, .broadcast: return 1
    case .allgather, .reduceScatter, .alltoall, .gather, .scatter: return (n - 1) / n
    }
  }

  /// The element count passed to the call for a message of `bytes`: for the gathering and
  /// scattering kinds, size is the whole buffer, so each rank's block is a 1/ranks share.
  func count(bytes: Int, ranks: Int, dataType: DataType) -> Int {
    let elements = bytes / dataType.size
    switch self {
    case .allreduce, .reduce, .broadcast: return elements
    case .allgather, .reduceScatter, .alltoall, .gather, .scatter: return elements / ranks
    }
  }

  /// Elements of the send and receive buffers for a call with `count`.
  func bufferCounts(count: Int, ranks: Int) -> (send: Int, receive: Int) {
    switch self {
    case .allreduce, .reduce, .broadcast: return (count, count)
    case .allgather, .gather: return (count, count * ranks)
    case .reduceScatter, .scatter: return (count * ranks, count)
    case .alltoall: return (count * ranks, count * ranks)
    }
  }

  /// Where the input of an in-place call lives inside the output buffer (nccl's convention).
  func inPlaceInputOffset(count: Int, rank: Int) -> Int {
    switch self {
    case .allgather, .gather: return rank * count
    default: return 0
    }
  }

  /// Where the output of an in-place call lives inside the input buffer.
  func inPlaceOutputOffset(count: Int, rank: Int) -> Int {
    switch self {
    case .reduceScatter, .scatter: return rank * count
    default: return 0
    }
  }

  func start(
    _ comm: Communicator, input: UnsafeRawPointer, output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, op: ReduceOp, root: Int
  ) throws(KaitianError) -> Work {
    switch self {
    case .allreduce:
      return try comm.allReduce(input, into: output, count: count, dataType: dataType, op: op)
    case .reduce:
      return try comm.reduce(
        input, into: output, count: count, dataType: dataType, op: op, root: root)
    case .broadcast:
      return try comm.broadcast(input, into: output, count: count, dataType: dataType, root: root)
    case .allgather:
      return try comm.allGather(input, into: output, count: count, dataType: dataType)
    case .reduceScatter:
      return try comm.reduceScatter(input, into: output, count: count, dataType: dataType, op: op)
    case .alltoall:
      return try comm.allToAll(input, into: output, count: count, dataType: dataType)
    case .gather:
      return try comm.gather(input, into: output, count: count, dataType: dataType, root: root)
    case .scatter:
      return try comm.scatter(input, into: output, count: count, dataType: dataType, root: root)
    }
  }

  /// The expected value of output element `index` on `rank`, with inputs from `Reference`.
  func expected(
    index: Int, rank: Int, ranks: Int, count: Int, dataType: DataType, op: ReduceOp, root: Int
  ) -> Double? {
    func value(_ from: Int, _ at: Int) -> Double {
      Reference.value(rank: from, index: at, dataType: dataType, op: op)
    }
    switch self {
    case .allreduce:
      return Reference.reduced(index: index, size: ranks, dataType: dataType, op: op)
    case .reduce:
      return rank == root
        ? Reference.reduced(index: index, size: ranks, dataType: dataType, op: op) : nil
    case .broadcast: return value(root, index)
    case .allgather: return value(index / count, index % count)
    case .reduceScatter:
      return Reference.reduced(index: rank * count + index, size: ranks, dataType: dataType, op: op)
    case .alltoall: return value(index / count, rank * count + index % count)
    case .gather: return rank == root ? value(index / count, index % count) : nil
    case .scatter: return value(root, rank * count + index)
    }
  }
}
