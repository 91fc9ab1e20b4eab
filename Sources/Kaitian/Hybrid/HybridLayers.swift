import Synchronization

/// The communicators one rank of a hybrid job runs on, and the hierarchical allreduce over
/// them. Queued calls capture this value rather than the `HybridCommunicator`, so a pending
/// call never keeps the communicator alive.
struct HybridLayers: Sendable {
  let topology: Topology
  /// Every rank, through the engine: the path of every collective except allreduce.
  let world: Communicator
  /// This rank's group, through its own library; nil when the group has one rank. Used by the
  /// reduce stage only.
  let intra: (any GroupCollectives)?
  /// A second instance of the group's library, for the gather stage, so the two stages never
  /// issue calls on one communicator from two threads (whose order could differ by rank).
  let intraGather: (any GroupCollectives)?
  /// Local rank j of every group, through the engine (j = this rank's local rank); nil with
  /// one group, or when this local rank carries no shard (unequal sizes, j >= columns).
  let column: Communicator?
  /// How the relay reaches regions of the caller's buffers in host memory.
  let memory: any HybridMemory
  let clock = StageClock()

  static let allRanks = "over all ranks"

  /// Runs one step of a hybrid call to completion; its error says where the step ran.
  static func complete(
    _ step: @autoclosure () -> String, _ run: () throws(KaitianError) -> Void
  ) throws(KaitianError) {
    do throws(KaitianError) {
      try run()
    } catch {
      throw KaitianError(error.code, "\(step()): \(error)")
    }
  }

  /// `complete` for a step of the allreduce, its wall time added to `stage` for the breakdown.
  private func timed(
    _ stage: HybridStage, _ step: @autoclosure () -> String,
    _ run: () throws(KaitianError) -> Void
  ) throws(KaitianError) {
    try clock.timing(stage) { () throws(KaitianError) in try Self.complete(step(), run) }
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

  /// Hierarchical allreduce of `region`, in place, as pipeline tasks of one chunk each (at most
  /// `chunkBytes`).
  ///
  /// Equal group sizes L: the group reduce-scatters the chunk into L shards; local rank j
  /// allreduces shard j with local rank j of every other group on column j; the group allgathers
  /// the shards. Chunks are multiples of L elements, so none is padded or copied; the last
  /// fewer than L elements, if any, go as one more task the way unequal sizes go. Unequal
  /// sizes, where shards of different groups would not line up: S = the smallest group's size;
  /// each group allreduces the chunk, local ranks 0..<S allreduce shard j of it across groups,
  /// and each group broadcasts shard j from local rank j. Either way every local rank that
  /// carries a shard moves 1/L (1/S) of the data between groups at the same time, instead of
  /// one leader per group moving all of it.
  ///
  /// Every step sums for `avg`; the one division by the world size is done by the column, on
  /// its result in host memory. Every element's final value is computed by exactly one engine
  /// allreduce (a column's, or with one group the group's), whose members all get the same
  /// bits, and is only copied from there, so every rank ends bitwise identical. `prepare`, if
  /// given, runs at the reduce stage before each chunk's first step (the Swift API's copy of
  /// an out-of-place input).
  func allReduceTasks(
    _ region: DeviceRegion, dataType: DataType, op: ReduceOp, chunkBytes: Int,
    prepare: ((DeviceRegion) -> Void)? = nil
  ) -> [HybridPipeline.Steps] {
    let groups = topology.groups.count
    let equal = topology.hasEqualGroupSizes
    let multiple = groups > 1 && equal ? topology.group.size : 1
    let perChunk = max(multiple, chunkBytes / max(dataType.size, 1) / multiple * multiple)
    let body = region.count / multiple * multiple
    var chunks: [(DeviceRegion, equalShards: Bool)] = []
    var offset = 0
    while offset < body {
      let n = min(perChunk, body - offset)
      chunks.append((region.slice(offset, n), equal))
      offset += n
    }
    if body < region.count {
      chunks.append((region.slice(body, region.count - body), false))
    }
    return chunks.map { chunk, equalShards in
      var steps =
        groups == 1
        ? oneGroupSteps(chunk, dataType: dataType, op: op)
        : equalShards
          ? equalSizeSteps(chunk, dataType: dataType, op: op)
          : broadcastSteps(chunk, dataType: dataType, op: op, shards: equal ? 1 : topology.columns)
      if let prepare {
        let reduce = steps.reduce
        steps.reduce = { () throws(KaitianError) in
          prepare(chunk)
          try reduce?()
        }
      }
      return steps
    }
  }

  /// One group: its library reduces the chunk; nothing crosses groups.
  private func oneGroupSteps(
    _ chunk: DeviceRegion, dataType: DataType, op: ReduceOp
  ) -> HybridPipeline.Steps {
    HybridPipeline.Steps(
      reduce: { () throws(KaitianError) in
        if let intra {
          try timed(.groupAllReduce, "allreduce \(inGroup)") { () throws(KaitianError) in
            try intra.allReduce(chunk, dataType: dataType, op: op.step)
          }
        }
      },
      gather: { () throws(KaitianError) in
        guard op == .avg, chunk.count > 0 else { return }
        try memory.withHostView(chunk, dataType: dataType) { view in
          finish(view, count: chunk.count, dataType: dataType, op: op)
        }
      })
  }

  /// Equal sizes L, `chunk.count` a multiple of L.
  private func equalSizeSteps(
    _ chunk: DeviceRegion, dataType: DataType, op: ReduceOp
  ) -> HybridPipeline.Steps {
    guard let intra, let intraGather else {
      // One rank per group: the column is the whole job.
      return HybridPipeline.Steps(relay: { () throws(KaitianError) in
        try columnAllReduce(chunk, dataType: dataType, op: op)
      })
    }
    let width = chunk.count / intra.size
    let shard = chunk.slice(topology.localRank * width, width)
    return HybridPipeline.Steps(
      reduce: { () throws(KaitianError) in
        try timed(.groupReduceScatter, "reduce-scatter \(inGroup)") { () throws(KaitianError) in
          try intra.reduceScatter(chunk, dataType: dataType, op: op.step)
        }
      },
      relay: { () throws(KaitianError) in
        try columnAllReduce(shard, dataType: dataType, op: op)
      },
      gather: { () throws(KaitianError) in
        try timed(.groupAllGather, "allgather \(inGroup)") { () throws(KaitianError) in
          try intraGather.allGather(chunk, dataType: dataType)
        }
      })
  }

  /// The group allreduces the chunk; `shards` shards of it (the last one possibly shorter)
  /// cross groups on columns 0..<shards; each group broadcasts shard j from local rank j.
  private func broadcastSteps(
    _ chunk: DeviceRegion, dataType: DataType, op: ReduceOp, shards: Int
  ) -> HybridPipeline.Steps {
    let width = (chunk.count + shards - 1) / shards
    let shard = { (j: Int) in
      chunk.slice(
        min(chunk.count, j * width), min(chunk.count, (j + 1) * width) - min(chunk.count, j * width)
      )
    }
    let local = topology.localRank
    return HybridPipeline.Steps(
      reduce: { () throws(KaitianError) in
        guard let intra else { return }
        try timed(.groupAllReduce, "allreduce \(inGroup)") { () throws(KaitianError) in
          try intra.allReduce(chunk, dataType: dataType, op: op.step)
        }
      },
      relay: { () throws(KaitianError) in
        guard local < shards else { return }
        try columnAllReduce(shard(local), dataType: dataType, op: op)
      },
      gather: { () throws(KaitianError) in
        guard let intraGather else { return }
        for j in 0..<shards {
          try timed(.groupBroadcast, "broadcast of shard \(j) \(inGroup)") {
            () throws(KaitianError) in
            try intraGather.broadcast(shard(j), dataType: dataType, root: j)
          }
        }
      })
  }

  /// Allreduces `shard` between groups in host memory, then AVG's one division by the world
  /// size, so every copy made from here on already holds the final bits.
  private func columnAllReduce(
    _ shard: DeviceRegion, dataType: DataType, op: ReduceOp
  ) throws(KaitianError) {
    guard let column else { return }
    try timed(.relay, "allreduce \(acrossGroups)") { () throws(KaitianError) in
      try memory.withHostView(shard, dataType: dataType) { (view) throws(KaitianError) in
        try column.allReduce(
          view, into: view, count: shard.count, dataType: dataType, op: op.step
        ).wait()
        finish(view, count: shard.count, dataType: dataType, op: op)
      }
    }
  }

  private func finish(
    _ view: UnsafeMutableRawPointer, count: Int, dataType: DataType, op: ReduceOp
  ) {
    ReductionKernel(dataType: dataType, op: op).finish(
      view, count: count, contributors: topology.worldSize)
  }

  /// Fails every layer on every rank that shares one with this rank.
  func abort(reason: String) {
    column?.abort(reason: reason)
    intraGather?.abort(reason: reason)
    intra?.abort(reason: reason)
    world.abort(reason: reason)
  }

  /// Leaves the layers in the reverse order of joining.
  func destroy() {
    column?.destroy()
    intraGather?.destroy()
    intra?.destroy()
    world.destroy()
  }
}

extension ReduceOp {
  /// The op of each step of a hierarchical reduction: AVG sums, and divides once at the end.
  fileprivate var step: ReduceOp { self == .avg ? .sum : self }
}

/// The stages of a hybrid allreduce whose time the application's per-stage breakdown shows.
/// Numbered as include/kaitian.h's ktHybridStage_t.
public enum HybridStage: Int, CaseIterable, Sendable {
  case groupReduceScatter = 0
  case groupAllReduce = 1
  case groupAllGather = 2
  case groupBroadcast = 3
  /// Between groups: the column allreduce, with its staging through host memory.
  case relay = 4
}

/// Wall time spent in each stage, waiting for peers included, summed from every stage thread.
/// Timed here rather than by the group's library, so an engine group and a lent library are
/// timed alike.
final class StageClock: Sendable {
  private let nanoseconds = Mutex([Int64](repeating: 0, count: HybridStage.allCases.count))

  func timing(
    _ stage: HybridStage, _ body: () throws(KaitianError) -> Void
  ) throws(KaitianError) {
    let started = ContinuousClock.now
    defer {
      let (seconds, attoseconds) = (ContinuousClock.now - started).components
      nanoseconds.withLock {
        $0[stage.rawValue] += seconds * 1_000_000_000 + attoseconds / 1_000_000_000
      }
    }
    try body()
  }

  func seconds(_ stage: HybridStage) -> Double {
    Double(nanoseconds.withLock { $0[stage.rawValue] }) / 1e9
  }
}
