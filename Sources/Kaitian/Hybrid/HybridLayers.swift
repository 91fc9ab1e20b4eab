/// The communicators one rank of a hybrid job runs on, and the hierarchical allreduce over
/// them. Queued calls capture this value rather than the `HybridCommunicator`, so a pending
/// call never keeps the communicator alive.
struct HybridLayers: Sendable {
  let topology: Topology
  /// Every rank, through the engine: the path of every collective except allreduce.
  let world: Communicator
  /// This rank's group, through its own library; nil when the group has one rank.
  let intra: (any GroupCollectives)?
  /// Local rank j of every group, through the engine (j = this rank's local rank); nil with
  /// one group, or when this local rank carries no shard (unequal sizes, j >= columns).
  let column: Communicator?

  static let allRanks = "over all ranks"

  /// Runs one step of a hybrid call to completion; its error says where the step ran.
  static func complete(
    _ step: @autoclosure () -> String, _ issue: () throws(KaitianError) -> Work
  ) throws(KaitianError) {
    do throws(KaitianError) {
      try issue().wait()
    } catch {
      throw KaitianError(error.code, "\(step()): \(error)")
    }
  }

  private var inGroup: String {
    let group = topology.group
    return "inside group \(group.index) (\(group.identity)) as local rank "
      + "\(topology.localRank) of \(group.size)"
  }

  private var acrossGroups: String {
    "across groups on shard column \(topology.localRank) as column rank "
      + "\(topology.group.index) of \(topology.groups.count)"
  }

  /// Hierarchical allreduce, the algorithm of python/kaitian/process_group.py.
  ///
  /// Equal group sizes L: the group reduce-scatters the buffer (padded to a multiple of L) into
  /// L shards; local rank j allreduces shard j with local rank j of every other group on column
  /// j; the group allgathers the shards. Unequal sizes, where shards of different groups would
  /// not line up: S = the smallest group's size; each group allreduces the whole buffer, local
  /// ranks 0..<S allreduce shard j across groups, and each group broadcasts shard j from local
  /// rank j. Either way every local rank that carries a shard moves 1/L (1/S) of the data
  /// between groups at the same time, instead of one leader per group moving all of it.
  ///
  /// Every step sums for `avg`; the one division by the world size comes last. Every element's
  /// final value is computed by exactly one engine allreduce (a column's, or with one group the
  /// group's), whose members all get the same bits, and is only copied from there, so every
  /// rank ends bitwise identical.
  func allReduce(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, op: ReduceOp
  ) throws(KaitianError) {
    let stepOp: ReduceOp = op == .avg ? .sum : op
    let width = dataType.size
    // One group needs no shards: its library reduces the whole buffer.
    let shards =
      topology.groups.count == 1
      ? 1 : topology.hasEqualGroupSizes ? topology.group.size : topology.columns
    let chunk = (count + shards - 1) / shards
    let padded = chunk * shards != count
    let buffer =
      padded ? .allocate(byteCount: chunk * shards * width, alignment: 64) : output
    defer { if padded { buffer.deallocate() } }
    if padded {
      buffer.copyMemory(from: input, byteCount: count * width)
      (buffer + count * width).initializeMemory(
        as: UInt8.self, repeating: 0, count: (chunk * shards - count) * width)
    } else if UnsafeRawPointer(output) != input {
      output.copyMemory(from: input, byteCount: count * width)
    }
    let shard = { (j: Int) in buffer + j * chunk * width }
    let local = topology.localRank

    if topology.groups.count == 1 {
      try intraAllReduce(buffer, count: count, dataType: dataType, op: stepOp)
    } else if topology.hasEqualGroupSizes {
      if let intra {
        let own = UnsafeMutableRawPointer.allocate(byteCount: max(chunk * width, 1), alignment: 64)
        defer { own.deallocate() }
        try Self.complete("reduce-scatter \(inGroup)") { () throws(KaitianError) in
          try intra.reduceScatter(buffer, into: own, count: chunk, dataType: dataType, op: stepOp)
        }
        try columnAllReduce(own, count: chunk, dataType: dataType, op: stepOp)
        try Self.complete("allgather \(inGroup)") { () throws(KaitianError) in
          try intra.allGather(own, into: buffer, count: chunk, dataType: dataType)
        }
      } else {
        try columnAllReduce(buffer, count: chunk, dataType: dataType, op: stepOp)
      }
    } else {
      try intraAllReduce(buffer, count: chunk * shards, dataType: dataType, op: stepOp)
      if local < shards {
        try columnAllReduce(shard(local), count: chunk, dataType: dataType, op: stepOp)
      }
      if let intra {
        for j in 0..<shards {
          try Self.complete("broadcast of shard \(j) \(inGroup)") { () throws(KaitianError) in
            try intra.broadcast(
              shard(j), into: shard(j), count: chunk, dataType: dataType, root: j)
          }
        }
      }
    }

    if padded { output.copyMemory(from: buffer, byteCount: count * width) }
    ReductionKernel(dataType: dataType, op: op).finish(
      output, count: count, contributors: topology.worldSize)
  }

  private func intraAllReduce(
    _ buffer: UnsafeMutableRawPointer, count: Int, dataType: DataType, op: ReduceOp
  ) throws(KaitianError) {
    guard let intra else { return }
    try Self.complete("allreduce \(inGroup)") { () throws(KaitianError) in
      try intra.allReduce(buffer, into: buffer, count: count, dataType: dataType, op: op)
    }
  }

  private func columnAllReduce(
    _ shard: UnsafeMutableRawPointer, count: Int, dataType: DataType, op: ReduceOp
  ) throws(KaitianError) {
    guard let column else { return }
    try Self.complete("allreduce \(acrossGroups)") { () throws(KaitianError) in
      try column.allReduce(shard, into: shard, count: count, dataType: dataType, op: op)
    }
  }

  /// Fails every layer on every rank that shares one with this rank.
  func abort(reason: String) {
    column?.abort(reason: reason)
    intra?.abort(reason: reason)
    world.abort(reason: reason)
  }

  /// Leaves the layers in the reverse order of joining.
  func destroy() {
    column?.destroy()
    intra?.destroy()
    world.destroy()
  }
}
