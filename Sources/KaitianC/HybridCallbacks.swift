import Glibc
import Kaitian
import KaitianHeader

/// Calls one of the application's functions that report failure as a nonzero return and a
/// message in a buffer; a failure becomes a KaitianError naming `what`.
func callApplication(
  _ what: @autoclosure () -> String,
  _ function: (UnsafeMutablePointer<CChar>, Int) -> Int32
) throws(KaitianError) {
  let capacity = 1024
  let (status, text) = withUnsafeTemporaryAllocation(of: CChar.self, capacity: capacity) {
    buffer -> (Int32, String) in
    let message = buffer.baseAddress!
    message.initialize(repeating: 0, count: capacity)
    let status = function(message, capacity)
    guard status != 0 else { return (0, "") }
    message[capacity - 1] = 0  // never trust the application to terminate it
    return (status, String(cString: message))
  }
  guard status != 0 else { return }
  throw KaitianError(
    .systemError,
    "\(what()) failed (status \(status)): \(text.isEmpty ? "no message given" : text)")
}

extension ktRegion_t {
  init(_ region: DeviceRegion) {
    self.init(buffer: region.buffer, offset: region.offset, count: region.count)
  }
}

extension ktDataType_t {
  init(_ dataType: DataType) { self.init(rawValue: UInt32(dataType.rawValue)) }
}

extension ktRedOp_t {
  init(_ op: ReduceOp) { self.init(rawValue: UInt32(op.rawValue)) }
}

/// A group library made of the application's functions (ktGroupLibrary_t), such as the Python
/// package's wrapper around torch's ProcessGroup for gloo, NCCL, CNCL or HCCL.
///
/// The header promises each instance is called from one Kaitian thread at a time, and that
/// the functions may be called from any thread, which is what makes this class Sendable.
final class CallbackGroup: GroupCollectives, @unchecked Sendable {
  let rank: Int
  let size: Int
  private let library: ktGroupLibrary_t
  private let name: String

  /// Fails (nil) unless the four collectives are present.
  init?(_ library: ktGroupLibrary_t, rank: Int, size: Int, name: String) {
    guard library.allReduce != nil, library.reduceScatter != nil, library.allGather != nil,
      library.broadcast != nil
    else { return nil }
    self.library = library
    self.rank = rank
    self.size = size
    self.name = name
  }

  func allReduce(_ region: DeviceRegion, dataType: DataType, op: ReduceOp) throws(KaitianError) {
    try callApplication("\(name)'s allReduce on \(region)") { message, capacity in
      library.allReduce(
        library.userData, ktRegion_t(region), ktDataType_t(dataType), ktRedOp_t(op), message,
        capacity)
    }
  }

  func reduceScatter(
    _ region: DeviceRegion, dataType: DataType, op: ReduceOp
  ) throws(KaitianError) {
    try callApplication("\(name)'s reduceScatter on \(region)") { message, capacity in
      library.reduceScatter(
        library.userData, ktRegion_t(region), ktDataType_t(dataType), ktRedOp_t(op), message,
        capacity)
    }
  }

  func allGather(_ region: DeviceRegion, dataType: DataType) throws(KaitianError) {
    try callApplication("\(name)'s allGather on \(region)") { message, capacity in
      library.allGather(
        library.userData, ktRegion_t(region), ktDataType_t(dataType), message, capacity)
    }
  }

  func broadcast(_ region: DeviceRegion, dataType: DataType, root: Int) throws(KaitianError) {
    try callApplication("\(name)'s broadcast from \(root) on \(region)") { message, capacity in
      library.broadcast(
        library.userData, ktRegion_t(region), ktDataType_t(dataType), Int32(root), message,
        capacity)
    }
  }

  func abort(reason: String) {
    library.abort?(library.userData, reason)
  }

  func destroy() {
    library.destroy?(library.userData)
  }
}

/// Regions reached through the application's hostView and commit (ktHybridCallbacks_t).
struct CallbackMemory: HybridMemory, @unchecked Sendable {
  let callbacks: ktHybridCallbacks_t

  func hostView(
    _ region: DeviceRegion, dataType: DataType
  ) throws(KaitianError) -> UnsafeMutableRawPointer {
    var view: UnsafeMutableRawPointer?
    try callApplication("hostView of \(region)") { message, capacity in
      callbacks.hostView(
        callbacks.userData, ktRegion_t(region), ktDataType_t(dataType), &view, message,
        capacity)
    }
    guard let view else {
      throw KaitianError(.systemError, "hostView of \(region) succeeded but gave no memory")
    }
    return view
  }

  func commit(
    _ view: UnsafeMutableRawPointer, to region: DeviceRegion, dataType: DataType
  ) throws(KaitianError) {
    try callApplication("commit of \(region)") { message, capacity in
      callbacks.commit(
        callbacks.userData, ktRegion_t(region), ktDataType_t(dataType), view, message, capacity)
    }
  }
}

/// The application's steps of one ktHybridSubmit call; `release` runs when the last reference
/// to them goes, after the steps ran or were skipped.
final class CallbackSteps: @unchecked Sendable {
  let steps: ktHybridSteps_t

  init(_ steps: ktHybridSteps_t) { self.steps = steps }

  deinit { steps.release?(steps.userData) }

  /// The Swift step for one of the functions, nil when the function is NULL.
  func step(
    _ function: (
      @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<CChar>?, Int) ->
        Int32
    )?,
    _ stage: String
  ) -> (() throws(KaitianError) -> Void)? {
    guard let function else { return nil }
    return { () throws(KaitianError) in
      try callApplication("the application's \(stage) step") { message, capacity in
        function(self.steps.userData, message, capacity)
      }
    }
  }
}
