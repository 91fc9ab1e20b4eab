import Kaitian
import KaitianHeader

// The work-handle functions of include/kaitian.h.

@_cdecl("ktWorkWait")
public func ktWorkWait(_ work: ktWork_t?, _ timeoutSeconds: Double) -> ktResult_t {
  statusEntryPoint("ktWorkWait") { arguments throws(KaitianError) -> ktResult_t in
    let work = WorkHandle.from(try arguments.required(work, "work")).work
    let timeout = try arguments.timeout(timeoutSeconds)
    do {
      try work.wait(timeout: timeout)
    } catch {
      // Work.wait reports its own timeout as an error too; whether the call has ended tells
      // the two apart (and a call that ended just after the deadline reports its result).
      guard work.isCompleted else { return ktInProgress }
      if let failure = work.failure { throw failure }
    }
    return ktSuccess
  }
}

@_cdecl("ktWorkTest")
public func ktWorkTest(_ work: ktWork_t?, _ done: UnsafeMutablePointer<Int32>?) -> ktResult_t {
  entryPoint("ktWorkTest") { arguments throws(KaitianError) in
    let work = WorkHandle.from(try arguments.required(work, "work")).work
    let done = try arguments.required(done, "done")
    // Read the error before the flag: a call that ends in between then reads as not done.
    let failure = work.failure
    done.pointee = work.isCompleted ? 1 : 0
    if done.pointee == 1, let failure { throw failure }
  }
}

/// The callback and its argument, which C guarantees may be used from the engine thread.
private struct CompletionCallback: @unchecked Sendable {
  let function: ktWorkCallback_t
  let userData: UnsafeMutableRawPointer?
}

@_cdecl("ktWorkSetCallback")
public func ktWorkSetCallback(
  _ work: ktWork_t?, _ callback: ktWorkCallback_t?, _ userData: UnsafeMutableRawPointer?
) -> ktResult_t {
  entryPoint("ktWorkSetCallback") { arguments throws(KaitianError) in
    let work = WorkHandle.from(try arguments.required(work, "work")).work
    let callback = CompletionCallback(
      function: try arguments.required(callback, "callback"), userData: userData)
    work.onCompletion { failure in callback.function(callback.userData, ktResult_t(failure)) }
  }
}

@_cdecl("ktWorkGetSource")
public func ktWorkGetSource(_ work: ktWork_t?, _ source: UnsafeMutablePointer<Int32>?)
  -> ktResult_t
{
  entryPoint("ktWorkGetSource") { arguments throws(KaitianError) in
    let work = WorkHandle.from(try arguments.required(work, "work")).work
    let source = try arguments.required(source, "source")
    source.pointee = work.source.map { Int32($0) } ?? -1
  }
}

/// A NULL work returns NULL and records the error for ktGetLastError.
@_cdecl("ktWorkGetError")
public func ktWorkGetError(_ work: ktWork_t?) -> UnsafePointer<CChar>? {
  var message: UnsafePointer<CChar>?
  _ = entryPoint("ktWorkGetError") { arguments throws(KaitianError) in
    let handle = WorkHandle.from(try arguments.required(work, "work"))
    if let failure = handle.work.failure {
      message = handle.errorText.pointer { failure.description }
    }
  }
  return message
}

@_cdecl("ktWorkFree")
public func ktWorkFree(_ work: ktWork_t?) -> ktResult_t {
  entryPoint("ktWorkFree") { arguments throws(KaitianError) in
    WorkHandle.release(try arguments.required(work, "work"))
  }
}
