import KaitianStore

/// The vendor layer: the collectives a device library offers among the ranks of one group.
///
/// A hybrid allreduce needs exactly these four inside a group (reduce-scatter, allgather for
/// equal group sizes; allreduce, broadcast for unequal ones), which every vendor library has,
/// so that is all a library must provide. Pointers are the library's own memory (device memory
/// for a GPU library); each call starts the collective and returns a `Work` that completes
/// when its result is in place. Ranks are local ranks within the group.
///
/// The one conformance is Kaitian's engine itself (`Communicator`), the library of CPU groups
/// and the only one that runs on this machine. NCCL (cuda, rocm), CNCL (mlu) and HCCL (npu)
/// conformances would wrap `ncclAllReduce`/`cnclAllReduce`/`HcclAllReduce` and friends on a
/// stream and complete the `Work` from a stream event; they are not written, because there is
/// neither the hardware nor the headers here (the Python package has those paths, through
/// torch). `Work` is created and completed inside this module, so such a conformance would live
/// here too.
public protocol GroupCollectives: AnyObject, Sendable {
  /// This rank's position in the group.
  var rank: Int { get }
  var size: Int { get }

  func allReduce(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, op: ReduceOp
  ) throws(KaitianError) -> Work

  /// `input` holds size * count elements; local rank r receives block r of the reduction.
  func reduceScatter(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, op: ReduceOp
  ) throws(KaitianError) -> Work

  /// Every rank contributes `count` elements; `output` holds size * count, in local rank order.
  func allGather(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType
  ) throws(KaitianError) -> Work

  /// `input` is read on the root only and may be nil elsewhere.
  func broadcast(
    _ input: UnsafeRawPointer?, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, root: Int
  ) throws(KaitianError) -> Work

  /// Fails pending and later calls on every rank of the group, so a failure elsewhere in the
  /// hybrid job reaches ranks blocked inside the group.
  func abort(reason: String)

  /// Finishes issued calls and leaves the group.
  func destroy()
}

/// The engine inside a group: shared memory between the group's ranks on one host.
extension Communicator: GroupCollectives {}

/// What a `HybridCommunicator.GroupFactory` needs to join this rank to its group's library.
public struct GroupMembership: Sendable {
  public let group: Topology.Group
  /// This rank's position in `group`.
  public let localRank: Int
  public let store: any RendezvousStore
  public let token: JobToken
  /// The hybrid communicator's options with `storePrefix` set to "<prefix>/intra/<group index>",
  /// a namespace of its own for the library's rendezvous.
  public let options: CommunicatorOptions
}
