import Kaitian
import KaitianHeader

// The hybrid communicator functions of include/kaitian.h.

/// ktHybrid_t: the hybrid communicator, handles of the communicators it is built on (borrowed
/// by the caller, so they live as long as this handle), and its first failure's C string.
final class HybridHandle: OpaqueHandle {
  let hybrid: HybridCommunicator
  let world: CommHandle
  let column: CommHandle?
  /// The engine's group communicators, when the engine is the group's library.
  let group: [CommHandle]
  let failureText = CachedCString()

  init(_ hybrid: HybridCommunicator) {
    self.hybrid = hybrid
    world = CommHandle(hybrid.world)
    column = hybrid.column.map(CommHandle.init)
    group = hybrid.groupCommunicators.map(CommHandle.init)
  }

  /// A handle the caller does not own: valid while this one is.
  static func borrowed(_ handle: CommHandle) -> ktComm_t {
    OpaquePointer(Unmanaged.passUnretained(handle).toOpaque())
  }
}

extension Arguments {
  mutating func hybrid(_ handle: ktHybrid_t?) throws(KaitianError) -> HybridCommunicator {
    let hybrid = HybridHandle.from(try required(handle, "hybrid")).hybrid
    rank = hybrid.rank
    return hybrid
  }
}

@_cdecl("ktHybridInitRank")
public func ktHybridInitRank(
  _ hybrid: UnsafeMutablePointer<ktHybrid_t?>?, _ store: ktStore_t?, _ nranks: Int32,
  _ rank: Int32, _ deviceKind: UnsafePointer<CChar>?, _ config: UnsafePointer<ktConfig_t>?,
  _ callbacks: UnsafePointer<ktHybridCallbacks_t>?
) -> ktResult_t {
  entryPoint("ktHybridInitRank") { arguments throws(KaitianError) in
    let hybrid = try arguments.required(hybrid, "hybrid")
    hybrid.pointee = nil
    arguments.rank = Int(rank)
    let store = StoreHandle.from(try arguments.required(store, "store"))
    let kind = try arguments.string(deviceKind, "deviceKind")
    let settings = try CommunicatorSettings(config, arguments)
    let callbacks = try hybridCallbacks(callbacks, arguments)
    let memory: any HybridMemory =
      callbacks.hostView == nil ? HostMemory() : CallbackMemory(callbacks: callbacks)
    let communicator = try HybridCommunicator(
      store: store.store, rank: Int(rank), size: Int(nranks),
      identity: RankIdentity(deviceKind: kind, host: settings.options.hostIdentity),
      token: settings.token, options: settings.options, memory: memory,
      advertisedHostHint: store.advertisedHostHint
    ) { membership throws(KaitianError) in
      try joinGroup(membership, callbacks)
    }
    hybrid.pointee = HybridHandle(communicator).retainedPointer()
  }
}

/// Checks the callbacks struct as ktCommInitRank checks a config: its size first.
private func hybridCallbacks(
  _ callbacks: UnsafePointer<ktHybridCallbacks_t>?, _ arguments: Arguments
) throws(KaitianError) -> ktHybridCallbacks_t {
  let callbacks = try arguments.required(callbacks, "callbacks")
  let size = UnsafeRawPointer(callbacks).load(as: Int.self)
  guard size >= MemoryLayout<ktHybridCallbacks_t>.size else {
    throw arguments.invalid(
      "callbacks.size is \(size), less than sizeof(ktHybridCallbacks_t) = "
        + "\(MemoryLayout<ktHybridCallbacks_t>.size)")
  }
  let fields = callbacks.pointee
  guard fields.joinGroup != nil else { throw arguments.invalid("callbacks.joinGroup is NULL") }
  guard (fields.hostView == nil) == (fields.commit == nil) else {
    throw arguments.invalid("callbacks.hostView and callbacks.commit must both be set or both NULL")
  }
  return fields
}

/// Asks the application for one instance of this rank's group library.
private func joinGroup(
  _ membership: GroupMembership, _ callbacks: ktHybridCallbacks_t
) throws(KaitianError) -> any GroupCollectives {
  let group = membership.group
  let ranks = group.ranks.map { Int32($0) }
  var library = ktGroupLibrary_t()
  var status: Int32 = 0
  let what = "joinGroup (group \(group.index), instance \(membership.instance))"
  try callApplication(what) { message, capacity in
    ranks.withUnsafeBufferPointer { ranks in
      group.identity.deviceKind.withCString { kind in
        group.identity.host.withCString { host in
          membership.options.storePrefix.withCString { prefix in
            var info = ktGroupInfo_t(
              groupIndex: Int32(group.index), groupCount: Int32(membership.groupCount),
              localRank: Int32(membership.localRank), groupSize: Int32(group.size),
              globalRanks: ranks.baseAddress, deviceKind: kind, hostId: host,
              storePrefix: prefix, instance: Int32(membership.instance))
            status = callbacks.joinGroup(
              callbacks.userData, &info, &library, message, capacity)
            return status == 1 ? 0 : status
          }
        }
      }
    }
  }
  if status == 1 { return try HybridCommunicator.engineGroup(membership) }
  guard
    let made = CallbackGroup(
      library, rank: membership.localRank, size: group.size,
      name: "group \(group.index)'s library")
  else {
    library.destroy?(library.userData)
    throw KaitianError(
      .invalidArgument,
      "\(what) returned a library without allReduce, reduceScatter, "
        + "allGather and broadcast")
  }
  return made
}

@_cdecl("ktHybridDestroy")
public func ktHybridDestroy(_ hybrid: ktHybrid_t?) -> ktResult_t {
  entryPoint("ktHybridDestroy") { arguments throws(KaitianError) in
    let handle = try arguments.required(hybrid, "hybrid")
    HybridHandle.from(handle).hybrid.destroy()
    HybridHandle.release(handle)
  }
}

/// reason NULL is allowed: the peers then learn only that the application aborted.
@_cdecl("ktHybridAbort")
public func ktHybridAbort(_ hybrid: ktHybrid_t?, _ reason: UnsafePointer<CChar>?) -> ktResult_t {
  entryPoint("ktHybridAbort") { arguments throws(KaitianError) in
    try arguments.hybrid(hybrid).abort(
      reason: reason.map { String(cString: $0) } ?? "no reason given")
  }
}

@_cdecl("ktHybridGetAsyncError")
public func ktHybridGetAsyncError(
  _ hybrid: ktHybrid_t?, _ asyncError: UnsafeMutablePointer<ktResult_t>?
) -> ktResult_t {
  entryPoint("ktHybridGetAsyncError") { arguments throws(KaitianError) in
    let communicator = try arguments.hybrid(hybrid)
    try arguments.required(asyncError, "asyncError").pointee = ktResult_t(communicator.failure)
  }
}

/// A NULL hybrid returns "" and records the error for ktGetLastError.
@_cdecl("ktHybridGetLastError")
public func ktHybridGetLastError(_ hybrid: ktHybrid_t?) -> UnsafePointer<CChar> {
  failureMessage("ktHybridGetLastError") { arguments throws(KaitianError) in
    let handle = HybridHandle.from(try arguments.required(hybrid, "hybrid"))
    return (handle.hybrid.failure, handle.failureText)
  }
}

@_cdecl("ktHybridTopology")
public func ktHybridTopology(
  _ hybrid: ktHybrid_t?, _ groupOfRank: UnsafeMutablePointer<Int32>?,
  _ localRankOfRank: UnsafeMutablePointer<Int32>?
) -> ktResult_t {
  entryPoint("ktHybridTopology") { arguments throws(KaitianError) in
    let topology = try arguments.hybrid(hybrid).topology
    let groups = try arguments.required(groupOfRank, "groupOfRank")
    let locals = try arguments.required(localRankOfRank, "localRankOfRank")
    for group in topology.groups {
      for (local, rank) in group.ranks.enumerated() {
        groups[rank] = Int32(group.index)
        locals[rank] = Int32(local)
      }
    }
  }
}

@_cdecl("ktHybridWorld")
public func ktHybridWorld(
  _ hybrid: ktHybrid_t?, _ comm: UnsafeMutablePointer<ktComm_t?>?
) -> ktResult_t {
  entryPoint("ktHybridWorld") { arguments throws(KaitianError) in
    let out = try arguments.required(comm, "comm")
    out.pointee = HybridHandle.borrowed(
      HybridHandle.from(try arguments.required(hybrid, "hybrid")).world)
  }
}

@_cdecl("ktHybridColumn")
public func ktHybridColumn(
  _ hybrid: ktHybrid_t?, _ comm: UnsafeMutablePointer<ktComm_t?>?
) -> ktResult_t {
  entryPoint("ktHybridColumn") { arguments throws(KaitianError) in
    let out = try arguments.required(comm, "comm")
    out.pointee = HybridHandle.from(try arguments.required(hybrid, "hybrid")).column.map(
      HybridHandle.borrowed)
  }
}

@_cdecl("ktHybridGroupComm")
public func ktHybridGroupComm(
  _ hybrid: ktHybrid_t?, _ instance: Int32, _ comm: UnsafeMutablePointer<ktComm_t?>?
) -> ktResult_t {
  entryPoint("ktHybridGroupComm") { arguments throws(KaitianError) in
    let out = try arguments.required(comm, "comm")
    out.pointee = nil
    guard instance == 0 || instance == 1 else {
      throw arguments.invalid("instance is \(instance), not 0 (reduce stage) or 1 (gather stage)")
    }
    let group = HybridHandle.from(try arguments.required(hybrid, "hybrid")).group
    if Int(instance) < group.count { out.pointee = HybridHandle.borrowed(group[Int(instance)]) }
  }
}

@_cdecl("ktHybridStageSeconds")
public func ktHybridStageSeconds(
  _ hybrid: ktHybrid_t?, _ stage: ktHybridStage_t, _ seconds: UnsafeMutablePointer<Double>?
) -> ktResult_t {
  entryPoint("ktHybridStageSeconds") { arguments throws(KaitianError) in
    let communicator = try arguments.hybrid(hybrid)
    guard let stage = HybridStage(rawValue: Int(stage.rawValue)) else {
      throw arguments.invalid("stage \(stage.rawValue) is not a ktHybridStage_t")
    }
    try arguments.required(seconds, "seconds").pointee = communicator.stageSeconds(stage)
  }
}

@_cdecl("ktHybridAllReduce")
public func ktHybridAllReduce(
  _ region: ktRegion_t, _ datatype: ktDataType_t, _ op: ktRedOp_t, _ hybrid: ktHybrid_t?,
  _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  entryPoint("ktHybridAllReduce") { arguments throws(KaitianError) in
    let work = try arguments.required(work, "work")
    work.pointee = nil
    let communicator = try arguments.hybrid(hybrid)
    let count = try arguments.count(region.count, "region.count")
    let offset = try arguments.count(region.offset, "region.offset")
    let issued = try communicator.allReduce(
      DeviceRegion(buffer: region.buffer, offset: offset, count: count),
      dataType: try arguments.dataType(datatype), op: try arguments.op(op))
    work.pointee = WorkHandle(issued).retainedPointer()
  }
}

@_cdecl("ktHybridSubmit")
public func ktHybridSubmit(
  _ steps: UnsafePointer<ktHybridSteps_t>?, _ name: UnsafePointer<CChar>?, _ direct: Int32,
  _ hybrid: ktHybrid_t?, _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  entryPoint("ktHybridSubmit") { arguments throws(KaitianError) in
    let work = try arguments.required(work, "work")
    work.pointee = nil
    let communicator = try arguments.hybrid(hybrid)
    let kind = try arguments.string(name, "name")
    let fields = try arguments.required(steps, "steps").pointee
    if direct != 0 && (fields.reduce != nil || fields.relay != nil || fields.gather == nil) {
      throw arguments.invalid("a direct call has a gather step and no other")
    }
    // From here on the steps are ours: `release` runs once they are done or skipped.
    let owned = CallbackSteps(fields)
    let issued =
      if direct != 0, let gather = owned.step(fields.gather, "gather") {
        communicator.submitDirect(kind, step: gather)
      } else {
        communicator.submit(
          kind, reduce: owned.step(fields.reduce, "reduce"),
          relay: owned.step(fields.relay, "relay"), gather: owned.step(fields.gather, "gather"))
      }
    work.pointee = WorkHandle(issued).retainedPointer()
  }
}
