import Kaitian
import KaitianHeader

// The version and error functions of include/kaitian.h.

@_cdecl("ktGetVersion")
public func ktGetVersion(_ version: UnsafeMutablePointer<Int32>?) -> ktResult_t {
  entryPoint("ktGetVersion") { arguments throws(KaitianError) in
    try arguments.required(version, "version").pointee = Int32(KaitianVersion.code)
  }
}

/// Indexed by ktResult_t; made once so the pointers stay valid forever, as the header promises.
private let resultDescriptions: [StaticCString] = [
  "success",
  "invalid argument: a bad argument from the caller",
  "invalid usage: a valid argument at the wrong time",
  "system error: the operating system refused a request",
  "remote error: a peer failed, left, or its connection broke",
  "timeout: a call or a wait passed its deadline",
  "mismatch: ranks issued different collectives",
  "in progress: the work has not finished yet",
  "internal error: a bug in Kaitian, please report it",
].map(StaticCString.init)

private let unknownResult = StaticCString("unknown ktResult_t value")

@_cdecl("ktGetErrorString")
public func ktGetErrorString(_ result: ktResult_t) -> UnsafePointer<CChar> {
  let index = Int(result.rawValue)
  return (index < resultDescriptions.count ? resultDescriptions[index] : unknownResult).pointer
}

@_cdecl("ktGetLastError")
public func ktGetLastError() -> UnsafePointer<CChar> {
  LastError.message
}
