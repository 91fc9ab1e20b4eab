import KaitianStore
import Synchronization

/// One communicator over ranks of different device kinds whose libraries cannot talk to each
/// other: each group (one kind on one host) uses its own library inside, and the groups meet in
/// host memory through Kaitian's engine. The design is python/kaitian's, shared with the
/// PyTorch backend; docs/HYBRID.md explains it.
///
/// Every call returns a `Work` at once and runs later on the communicator's three stage
/// threads (`HybridPipeline`), in issue order: an allreduce chunk by chunk through reduce,
/// relay and gather, so the stages of successive chunks and calls overlap; every other call at
/// the gather stage, after the calls before it. Buffers are host memory and are borrowed until
/// the work completes; a device tensor would be staged to host by the vendor layer, which this
/// Swift API does not have. Threading: as `Communicator`.
///
/// A failed call fails the communicator on this rank and aborts every communicator it is built
/// on, so ranks blocked inside a group or a column hear of it at once rather than at their
/// deadline; later calls fail with "the communicator already failed".
public final class HybridCommunicator: Sendable {
  /// Makes the intra-group library for this rank's group. Called twice (the reduce stage's and
  /// the gather stage's instance, `GroupMembership.instance` 0 and 1), on every rank of every
  /// group with more than one rank, in the same order on every rank.
  public typealias GroupFactory = (GroupMembership) throws(KaitianError) -> any GroupCollectives

  public let rank: Int
  public let size: Int
  public let topology: Topology
  private let layers: HybridLayers
  private let health: CommunicatorHealth
  private let pipeline: HybridPipeline
  private let chunkBytes: Int
  private let memory: any HybridMemory
  private let sequence = Mutex<UInt64>(0)
  private let destroyed = Atomic<Bool>(false)

  /// Exchanges identities through `store`, then joins, in this order on every rank so no two
  /// ranks wait on each other's joins: all ranks ("<prefix>/world"), this rank's group twice
  /// ("<prefix>/intra/<g>" and ".../gather", through `makeGroup`), and its shard column ("<prefix>/column/<j>":
  /// local rank j of every group), where prefix is `options.storePrefix`. Blocks until every
  /// rank has joined or `options.timeoutSeconds` passes. `memory` says what the buffers of
  /// calls are: host addresses by default, or the application's device buffers.
  public init(
    store: any RendezvousStore, rank: Int, size: Int, identity: RankIdentity, token: JobToken,
    options: CommunicatorOptions = CommunicatorOptions(), memory: any HybridMemory = HostMemory(),
    advertisedHostHint: String? = nil,
    makeGroup: GroupFactory = HybridCommunicator.engineGroup
  ) throws(KaitianError) {
    guard size >= 1, rank >= 0, rank < size else {
      throw .invalidArgument("rank \(rank) is outside a communicator of size \(size)")
    }
    let prefix = options.storePrefix
    let topology = try Topology.exchange(
      store: AuthenticatedRendezvous(store, token: token), prefix: prefix, rank: rank, size: size,
      identity: identity,
      timeout: .milliseconds(Int64(options.timeoutSeconds * 1000)))
    let group = topology.group
    let local = topology.localRank
    func scoped(_ name: String) -> CommunicatorOptions {
      var scoped = options
      scoped.storePrefix = "\(prefix)/\(name)"
      return scoped
    }
    let world = try Communicator(
      store: store, rank: rank, size: size, token: token, options: scoped("world"),
      advertisedHostHint: advertisedHostHint)
    var intra: (any GroupCollectives)?
    var intraGather: (any GroupCollectives)?
    var column: Communicator?
    func joinGroup(_ name: String, instance: Int) throws(KaitianError) -> any GroupCollectives {
      let membership = GroupMembership(
        group: group, localRank: local, store: store, token: token, options: scoped(name),
        advertisedHostHint: advertisedHostHint, memory: memory, instance: instance)
      let made = try makeGroup(membership)
      guard made.rank == local, made.size == group.size else {
        made.destroy()
        throw KaitianError(
          .invalidArgument, rank: rank, call: "hybrid communicator set-up",
          "the group factory made rank \(made.rank) of \(made.size) for local rank \(local) "
            + "of group \(group.index) (\(group.size) ranks)")
      }
      return made
    }
    do throws(KaitianError) {
      if group.size > 1 {
        intra = try joinGroup("intra/\(group.index)", instance: 0)
        intraGather = try joinGroup("intra/\(group.index)/gather", instance: 1)
      }
      if topology.groups.count > 1 && local < topology.columns {
        column = try Communicator(
          store: store, rank: group.index, size: topology.groups.count, token: token,
          options: scoped("column/\(local)"), advertisedHostHint: advertisedHostHint)
      }
    } catch {
      column?.destroy()
      intraGather?.destroy()
      intra?.destroy()
      world.destroy()
      throw error
    }
    let layers = HybridLayers(
      topology: topology, world: world, intra: intra, intraGather: intraGather, column: column,
      memory: memory)
    let health = CommunicatorHealth()
    do throws(KaitianError) {
      pipeline = try HybridPipeline(rank: rank, health: health) { error in
        guard health.fail(error) else { return }
        Log.warn("hybrid", error.description)
        layers.abort(reason: error.description)
      }
    } catch {
      layers.destroy()
      throw error
    }
    chunkBytes = options.hybridChunkBytes
    self.memory = memory
    self.rank = rank
    self.size = size
    self.topology = topology
    self.layers = layers
    self.health = health
    Log.info(
      "hybrid",
      "rank \(rank)/\(size): group \(group.index) of \(topology.groups.count) "
        + "(\(group.identity), ranks \(group.ranks)), local rank \(local)"
        + (column == nil ? "" : ", shard column \(local)"))
  }

  deinit { destroy() }

  /// The default vendor layer: Kaitian's engine over the group's ranks.
  public static func engineGroup(
    _ membership: GroupMembership
  ) throws(KaitianError) -> any GroupCollectives {
    EngineGroup(
      try Communicator(
        store: membership.store, rank: membership.localRank, size: membership.group.size,
        token: membership.token, options: membership.options,
        advertisedHostHint: membership.advertisedHostHint),
      memory: membership.memory)
  }

  /// Finishes the calls already issued, then leaves every communicator it is built on.
  public func destroy() {
    guard !destroyed.exchange(true, ordering: .acquiringAndReleasing) else { return }
    pipeline.stop()
    layers.destroy()
  }

  /// Fails this communicator on every rank: pending and later calls fail with `reason`.
  public func abort(reason: String) {
    let error = KaitianError(.invalidUsage, rank: rank, "aborted by the application: \(reason)")
    if health.fail(error) { layers.abort(reason: error.description) }
  }

  /// The first fatal error, if the communicator has failed.
  public var failure: KaitianError? { health.failure }

  // MARK: Collectives

  /// Hierarchical, in place on `region` of the caller's buffers (host memory or the
  /// application's device buffers, as `memory` says): inside groups with their own libraries,
  /// across groups by every local rank in parallel, pipelined chunk by chunk (see
  /// `HybridLayers.allReduceTasks`). `avg` divides once by the world size, so every rank weighs
  /// the same whatever the size of its group. Results are bitwise identical on every rank.
  public func allReduce(
    _ region: DeviceRegion, dataType: DataType, op: ReduceOp
  ) throws(KaitianError) -> Work {
    try check("allreduce", count: region.count)
    return submit(
      "allreduce", "\(dataType) x \(region.count), \(op)",
      tasks: layers.allReduceTasks(region, dataType: dataType, op: op, chunkBytes: chunkBytes))
  }

  /// The same on host memory; in place when `input` and `output` are the same memory. Needs a
  /// communicator whose `memory` is `HostMemory`.
  public func allReduce(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, op: ReduceOp
  ) throws(KaitianError) -> Work {
    try check("allreduce", count: count)
    guard memory is HostMemory else {
      throw KaitianError(
        .invalidUsage, rank: rank, call: "hybrid allreduce",
        "this communicator's buffers are device regions: pass a DeviceRegion")
    }
    let region = HostMemory.region(output, count: count)
    let width = dataType.size
    let prepare: ((DeviceRegion) -> Void)? =
      input == UnsafeRawPointer(output)
      ? nil
      : { chunk in
        (output + chunk.offset * width).copyMemory(
          from: input + chunk.offset * width, byteCount: chunk.count * width)
      }
    return submit(
      "allreduce", "\(dataType) x \(count), \(op)",
      tasks: layers.allReduceTasks(
        region, dataType: dataType, op: op, chunkBytes: chunkBytes, prepare: prepare))
  }

  /// The root's `input` (a global rank's; read there only, may be nil elsewhere) reaches every
  /// rank's `output`, through the engine over all ranks.
  public func broadcast(
    _ input: UnsafeRawPointer?, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, root: Int
  ) throws(KaitianError) -> Work {
    try check("broadcast", count: count, root: root)
    if rank == root && input == nil {
      throw KaitianError(
        .invalidArgument, rank: rank, call: "hybrid broadcast", "the root needs an input buffer")
    }
    return overAllRanks("broadcast", "\(dataType) x \(count), root \(root)") {
      world throws(KaitianError) in
      try world.broadcast(input, into: output, count: count, dataType: dataType, root: root)
    }
  }

  /// Every rank contributes `count` elements; `output` holds size * count in global rank order.
  public func allGather(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType
  ) throws(KaitianError) -> Work {
    try check("allgather", count: count)
    return overAllRanks("allgather", "\(dataType) x \(count)") { world throws(KaitianError) in
      try world.allGather(input, into: output, count: count, dataType: dataType)
    }
  }

  /// `input` holds size * count elements; global rank r receives block r of the reduction
  /// (`avg` divides by the world size).
  public func reduceScatter(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, op: ReduceOp
  ) throws(KaitianError) -> Work {
    try check("reduce_scatter", count: count)
    return overAllRanks("reduce_scatter", "\(dataType) x \(count), \(op)") {
      world throws(KaitianError) in
      try world.reduceScatter(input, into: output, count: count, dataType: dataType, op: op)
    }
  }

  /// Completes on a rank once every rank of every group has issued it.
  public func barrier() -> Work {
    overAllRanks("barrier", nil) { world in world.barrier() }
  }

  // MARK: Submitting calls

  /// A collective that needs no group library: the engine runs it over all ranks, on host
  /// memory, exact for every op and dtype (as the Python package does).
  private func overAllRanks(
    _ kind: String, _ detail: String?,
    _ issue: @escaping (Communicator) throws(KaitianError) -> Work
  ) -> Work {
    let world = layers.world
    let run = HybridPipeline.Steps(gather: { () throws(KaitianError) in
      try HybridLayers.complete(HybridLayers.allRanks) { () throws(KaitianError) in
        try issue(world).wait()
      }
    })
    return submit(kind, detail, tasks: [run])
  }

  /// Queues `tasks` on the pipeline as "hybrid <kind> #<n> (<detail>)"; their errors are
  /// attributed to this rank and that name.
  private func submit(
    _ kind: String, _ detail: String?, tasks: [HybridPipeline.Steps]
  ) -> Work {
    let number = sequence.withLock { value -> UInt64 in
      value += 1
      return value
    }
    let work = Work(name: "hybrid \(kind) #\(number)" + (detail.map { " (\($0))" } ?? ""))
    pipeline.submit(work: work, tasks: tasks)
    return work
  }

  /// Checked when the call is issued, so a bad argument throws at once and does not fail the
  /// communicator as it would from inside a queued call.
  private func check(_ kind: String, count: Int, root: Int? = nil) throws(KaitianError) {
    let call = "hybrid \(kind)"
    if count < 0 {
      throw KaitianError(.invalidArgument, rank: rank, call: call, "count \(count) is negative")
    }
    if let root, root < 0 || root >= size {
      throw KaitianError(
        .invalidArgument, rank: rank, call: call,
        "root \(root) is not a rank of this communicator (size \(size))")
    }
  }
}
