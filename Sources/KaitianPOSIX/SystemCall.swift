import Glibc

/// Runs a system call that reports failure by returning -1, retrying while it is interrupted by
/// a signal (`EINTR`), and returns its result together with the `errno` of a failure.
///
/// This is the one place that knows the -1/`errno` convention; `systemCall`, `writeFully` and
/// `sleep(for:)` build on it. Every call that must complete despite a signal (reads, writes,
/// opens, pipes, waits for children, shared-memory set-up) goes through one of them. Waits that
/// a signal may simply cut short (a poll slice whose caller loops and re-checks its deadline)
/// call the system directly and say so. Calls that treat some failures as normal outcomes
/// (`EAGAIN`, `EINPROGRESS`) use it directly.
@inline(__always)
public func retryingInterrupts<Result: BinaryInteger>(_ body: () -> Result) -> (
  Result, errno: Int32?
) {
  while true {
    let result = body()
    if result != -1 { return (result, nil) }
    let error = errno
    if error != EINTR { return (result, error) }
  }
}

/// Runs a system call, retrying `EINTR`, and throws a `SocketError` naming `operation` and the
/// `errno` when it fails.
@inline(__always)
package func systemCall<Result: BinaryInteger>(
  _ operation: @autoclosure () -> String, _ body: () -> Result
) throws(SocketError) -> Result {
  let (result, error) = retryingInterrupts(body)
  if let error { throw SocketError.systemCall(operation(), errno: error) }
  return result
}

/// Writes all of `bytes` to `descriptor` (a file or pipe), retrying interrupted and short
/// writes; nil, or the `errno` of the write that failed.
public func writeFully(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32? {
  var offset = 0
  while offset < bytes.count {
    let (written, error) = retryingInterrupts {
      Glibc.write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
    }
    if let error { return error }
    guard written > 0 else { return EIO }
    offset += written
  }
  return nil
}

/// Sleeps the calling thread for `duration`, resuming after signals until it has passed: the
/// retry pauses of connections and stores (never an event loop's thread).
package func sleep(for duration: Duration) {
  let nanoseconds = max(duration.nanoseconds, 0)
  var request = timespec(
    tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
  var remaining = timespec()
  _ = retryingInterrupts { () -> Int32 in
    let result = nanosleep(&request, &remaining)
    request = remaining  // an interrupted sleep resumes with what was left
    return result
  }
}

/// "No such file or directory (errno 2)": the text every Kaitian error uses for an errno.
package func errnoText(_ code: Int32) -> String {
  "\(String(cString: strerror(code))) (errno \(code))"
}
