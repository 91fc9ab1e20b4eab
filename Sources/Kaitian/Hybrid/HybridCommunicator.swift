import Glibc
import KaitianAuth
import KaitianPOSIX
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
  private let watch: HealthWatch
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
        group: group, groupCount: topology.groups.count, localRank: local, store: store,
        token: token, options: scoped(name),
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
    let grace = Duration.milliseconds(Int64(min(1, options.timeoutSeconds) * 1000))
    do throws(KaitianError) {
      pipeline = try HybridPipeline(
        rank: rank, health: health,
        explain: { error in HybridCommunicator.explain(error, world: world, grace: grace) }
      ) { error in
        Log.warn("hybrid", error.description)
        layers.abort(reason: error.description)
      }
    } catch {
      layers.destroy()
      throw error
    }
    let pipeline = pipeline
    do throws(KaitianError) {
      watch = try HealthWatch(world: world) { error in pipeline.failAll(error) }
    } catch {
      pipeline.stop()
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
    watch.stop()
    pipeline.stop()
    layers.destroy()
  }

  /// Fails this communicator on every rank: pending and later calls fail with `reason`.
  public func abort(reason: String) {
    pipeline.failAll(
      KaitianError(.invalidUsage, rank: rank, "aborted by the application: \(reason)"))
  }

  /// The communicator over every rank, which the hybrid calls other than allreduce use. The
  /// hybrid communicator owns it: it is destroyed with it.
  public var world: Communicator { layers.world }

  /// This rank's shard column (local rank j of every group), if it has one; owned as `world`.
  public var column: Communicator? { layers.column }

  /// Wall seconds spent so far in `stage` of hybrid allreduces, waiting for peers included.
  public func stageSeconds(_ stage: HybridStage) -> Double { layers.clock.seconds(stage) }

  /// The engine communicators inside this rank's group when the engine is the group's library
  /// (`engineGroup`): the reduce stage's, then the gather stage's. Empty when the application
  /// lent its own library or the group has one rank. Owned as `world`; the application issues
  /// on each only the calls that must keep order with that stage's (its own hierarchical
  /// collectives, as steps of `submit`).
  public var groupCommunicators: [Communicator] {
    [layers.intra, layers.intraGather].compactMap { ($0 as? EngineGroup)?.communicator }
  }

  /// A library's error only says a connection broke when a peer was lost; the all-ranks
  /// communicator soon names the lost rank, so a failed step waits up to `grace` for it.
  private static func explain(
    _ error: KaitianError, world: Communicator, grace: Duration
  ) -> KaitianError {
    let deadline = Deadline.after(grace)
    while Deadline.now < deadline {
      if let lost = world.failure {
        return KaitianError(
          lost.code, rank: error.rank, call: error.call,
          "\(lost) (this rank's step failed with: \(error.cause))")
      }
      usleep(20_000)
    }
    return error
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

  /// Queues the application's own steps as one call in this communicator's order: `reduce`
  /// on the reduce stage, `relay` on the relay stage, `gather` on the gather stage, each after
  /// the earlier calls' steps of that stage. For collectives the application composes from the
  /// layers (`world`, `column`, its own group library) that must keep order with allreduces.
  public func submit(
    _ kind: String, reduce: (() throws(KaitianError) -> Void)?,
    relay: (() throws(KaitianError) -> Void)?, gather: (() throws(KaitianError) -> Void)?
  ) -> Work {
    submit(kind, nil, tasks: [HybridPipeline.Steps(reduce: reduce, relay: relay, gather: gather)])
  }

  /// One quick step that issues work which completes on its own (an engine call on `world`):
  /// run on the caller's thread when no call is inside the stages, else queued at the gather
  /// stage (see `HybridPipeline.submitDirect`).
  public func submitDirect(_ kind: String, step: @escaping () throws(KaitianError) -> Void) -> Work
  {
    let work = Work(name: "hybrid \(kind) #\(nextNumber())")
    pipeline.submitDirect(work: work, step: step)
    return work
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
    let work = Work(name: "hybrid \(kind) #\(nextNumber())" + (detail.map { " (\($0))" } ?? ""))
    pipeline.submit(work: work, tasks: tasks)
    return work
  }

  private func nextNumber() -> UInt64 {
    sequence.withLock { value in
      value += 1
      return value
    }
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

/// A thread that fails the hybrid communicator as soon as its all-ranks communicator reports a
/// lost or failed peer (within `period`), whatever the stage threads are doing: one of them
/// may be blocked inside a library that learns of the loss only at its own timeout.
private final class HealthWatch: Sendable {
  static let period = Duration.milliseconds(100)
  private let stopping = ConditionLock(false)
  private let thread: Mutex<OSThread?>

  init(
    world: Communicator, onFailure: @escaping @Sendable (KaitianError) -> Void
  ) throws(KaitianError) {
    let stopping = stopping
    do {
      thread = Mutex(
        try OSThread.spawn(name: "kt-health") {
          while true {
            let stop = stopping.wait(until: .after(Self.period)) { $0 ? true : nil } ?? false
            if stop { return }
            if let failure = world.failure {
              onFailure(failure)
              return
            }
          }
        })
    } catch {
      throw .system("cannot start the hybrid health watch thread: \(error)")
    }
  }

  func stop() {
    stopping.withLock { $0 = true }
    stopping.broadcast()
    thread.withLock { thread in
      thread?.join()
      thread = nil
    }
  }
}
