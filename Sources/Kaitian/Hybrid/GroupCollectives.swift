import KaitianAuth
import KaitianStore

/// The vendor layer: the collectives a device library offers among the ranks of one group.
///
/// A hybrid allreduce needs exactly these four inside a group (reduce-scatter, allgather for
/// equal group sizes; allreduce, broadcast for unequal ones and short tails), which every vendor
/// library has, so that is all a library must provide. Every call is in place on a region of
/// the caller's buffer (device memory for a GPU library, see `DeviceRegion`) and returns once
/// the result is there. Ranks are local ranks within the group.
///
/// Conformances: Kaitian's engine (`EngineGroup`, the library of CPU groups), and a C caller's
/// functions (`ktHybridInitRank`), through which the Python package runs torch's ProcessGroup
/// for gloo, NCCL, CNCL or HCCL. NCCL's own in-place forms match these calls one to one
/// (ncclReduceScatter with recvbuff = sendbuff + rank * recvcount, ncclAllGather with sendbuff
/// = recvbuff + rank * sendcount).
public protocol GroupCollectives: AnyObject, Sendable {
  /// This rank's position in the group.
  var rank: Int { get }
  var size: Int { get }

  func allReduce(_ region: DeviceRegion, dataType: DataType, op: ReduceOp) throws(KaitianError)

  /// `region` holds `size` blocks of `region.count / size` elements; afterwards block `rank`
  /// holds the reduction of every rank's block `rank` (other blocks are undefined).
  func reduceScatter(_ region: DeviceRegion, dataType: DataType, op: ReduceOp)
    throws(KaitianError)

  /// `region` holds `size` blocks; afterwards every block r holds rank r's block r.
  func allGather(_ region: DeviceRegion, dataType: DataType) throws(KaitianError)

  func broadcast(_ region: DeviceRegion, dataType: DataType, root: Int) throws(KaitianError)

  /// Fails pending and later calls on every rank of the group, so a failure elsewhere in the
  /// hybrid job reaches ranks blocked inside the group.
  func abort(reason: String)

  /// Finishes issued calls and leaves the group.
  func destroy()
}

/// The engine inside a group: shared memory between the group's ranks on one host, on regions
/// the memory maps to host addresses.
public final class EngineGroup: GroupCollectives {
  public let communicator: Communicator
  private let memory: any HybridMemory

  public init(_ communicator: Communicator, memory: any HybridMemory) {
    self.communicator = communicator
    self.memory = memory
  }

  public var rank: Int { communicator.rank }
  public var size: Int { communicator.size }

  public func allReduce(
    _ region: DeviceRegion, dataType: DataType, op: ReduceOp
  ) throws(KaitianError) {
    try onHost(region, dataType) { (view) throws(KaitianError) in
      try communicator.allReduce(
        view, into: view, count: region.count, dataType: dataType, op: op)
    }
  }

  public func reduceScatter(
    _ region: DeviceRegion, dataType: DataType, op: ReduceOp
  ) throws(KaitianError) {
    let block = region.count / size
    try onHost(region, dataType) { (view) throws(KaitianError) in
      // In place: the ring reads block `rank` of the input last, in the step that writes it.
      try communicator.reduceScatter(
        view, into: view + rank * block * dataType.size, count: block, dataType: dataType,
        op: op)
    }
  }

  public func allGather(_ region: DeviceRegion, dataType: DataType) throws(KaitianError) {
    let block = region.count / size
    try onHost(region, dataType) { (view) throws(KaitianError) in
      try communicator.allGather(
        view + rank * block * dataType.size, into: view, count: block, dataType: dataType)
    }
  }

  public func broadcast(
    _ region: DeviceRegion, dataType: DataType, root: Int
  ) throws(KaitianError) {
    try onHost(region, dataType) { (view) throws(KaitianError) in
      try communicator.broadcast(
        view, into: view, count: region.count, dataType: dataType, root: root)
    }
  }

  public func abort(reason: String) { communicator.abort(reason: reason) }

  public func destroy() { communicator.destroy() }

  private func onHost(
    _ region: DeviceRegion, _ dataType: DataType,
    _ issue: (UnsafeMutableRawPointer) throws(KaitianError) -> Work
  ) throws(KaitianError) {
    try memory.withHostView(region, dataType: dataType) { (view) throws(KaitianError) in
      try issue(view).wait()
    }
  }
}

/// What a `HybridCommunicator.GroupFactory` needs to join this rank to its group's library.
public struct GroupMembership: Sendable {
  public let group: Topology.Group
  /// How many groups the job has.
  public let groupCount: Int
  /// This rank's position in `group`.
  public let localRank: Int
  public let store: any RendezvousStore
  public let token: JobToken
  /// The hybrid communicator's options with `storePrefix` set to a namespace of the library's
  /// own for its rendezvous: "<prefix>/intra/<group index>" for the reduce stage's instance,
  /// ".../gather" for the gather stage's.
  public let options: CommunicatorOptions
  /// The address this rank reached the store from, for an engine group's advertised host.
  public let advertisedHostHint: String?
  /// How regions of the caller's buffers reach host memory (for a library that works there).
  public let memory: any HybridMemory
  /// Which instance: 0 for the reduce stage's, 1 for the gather stage's.
  public let instance: Int
}
