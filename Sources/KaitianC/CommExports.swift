import Kaitian
import KaitianHeader

// The communicator functions of include/kaitian.h.

@_cdecl("ktCommInitRank")
public func ktCommInitRank(
  _ comm: UnsafeMutablePointer<ktComm_t?>?, _ store: ktStore_t?, _ nranks: Int32, _ rank: Int32,
  _ config: UnsafePointer<ktConfig_t>?
) -> ktResult_t {
  entryPoint("ktCommInitRank") { arguments throws(KaitianError) in
    let comm = try arguments.required(comm, "comm")
    comm.pointee = nil
    arguments.rank = Int(rank)
    let store = StoreHandle.from(try arguments.required(store, "store"))
    let settings = try CommunicatorSettings(config, arguments)
    let communicator = try Communicator(
      store: store.store, rank: Int(rank), size: Int(nranks), token: settings.token,
      options: settings.options, advertisedHostHint: store.advertisedHostHint)
    comm.pointee = CommHandle(communicator).retainedPointer()
  }
}

@_cdecl("ktCommDestroy")
public func ktCommDestroy(_ comm: ktComm_t?) -> ktResult_t {
  entryPoint("ktCommDestroy") { arguments throws(KaitianError) in
    let handle = try arguments.required(comm, "comm")
    CommHandle.from(handle).communicator.destroy()
    CommHandle.release(handle)
  }
}

/// reason NULL is allowed: the peers then learn only that the application aborted.
@_cdecl("ktCommAbort")
public func ktCommAbort(_ comm: ktComm_t?, _ reason: UnsafePointer<CChar>?) -> ktResult_t {
  entryPoint("ktCommAbort") { arguments throws(KaitianError) in
    try arguments.communicator(comm).abort(
      reason: reason.map { String(cString: $0) } ?? "no reason given")
  }
}

@_cdecl("ktCommCount")
public func ktCommCount(_ comm: ktComm_t?, _ count: UnsafeMutablePointer<Int32>?) -> ktResult_t {
  entryPoint("ktCommCount") { arguments throws(KaitianError) in
    let communicator = try arguments.communicator(comm)
    try arguments.required(count, "count").pointee = Int32(communicator.size)
  }
}

@_cdecl("ktCommUserRank")
public func ktCommUserRank(_ comm: ktComm_t?, _ rank: UnsafeMutablePointer<Int32>?) -> ktResult_t {
  entryPoint("ktCommUserRank") { arguments throws(KaitianError) in
    let communicator = try arguments.communicator(comm)
    try arguments.required(rank, "rank").pointee = Int32(communicator.rank)
  }
}

@_cdecl("ktCommGetAsyncError")
public func ktCommGetAsyncError(
  _ comm: ktComm_t?, _ asyncError: UnsafeMutablePointer<ktResult_t>?
) -> ktResult_t {
  entryPoint("ktCommGetAsyncError") { arguments throws(KaitianError) in
    let communicator = try arguments.communicator(comm)
    try arguments.required(asyncError, "asyncError").pointee = ktResult_t(communicator.failure)
  }
}

/// A NULL comm returns "" (the header has no error value for a string) and records the error
/// for ktGetLastError.
@_cdecl("ktCommGetLastError")
public func ktCommGetLastError(_ comm: ktComm_t?) -> UnsafePointer<CChar> {
  failureMessage("ktCommGetLastError") { arguments throws(KaitianError) in
    let handle = CommHandle.from(try arguments.required(comm, "comm"))
    return (handle.communicator.failure, handle.failureText)
  }
}

/// The C string of a handle's first failure, "" when it has none or `lookup` throws (the
/// error then goes to ktGetLastError): the body of the *GetLastError functions.
func failureMessage(
  _ function: String,
  _ lookup: (inout Arguments) throws(KaitianError) -> (KaitianError?, CachedCString)
) -> UnsafePointer<CChar> {
  var message = StaticCString.empty.pointer
  _ = entryPoint(function) { arguments throws(KaitianError) in
    let (failure, text) = try lookup(&arguments)
    if let failure { message = text.pointer { failure.description } }
  }
  return message
}
