import Glibc

/// Runs a system call that reports failure by returning -1, retrying while it is interrupted by
/// a signal (`EINTR`), and returns its result together with the `errno` of a failure.
///
/// This is the one place that knows the -1/`errno` convention; `systemCall` builds on it. Calls
/// that treat some failures as normal outcomes (`EAGAIN`, `EINPROGRESS`) use it directly.
@inline(__always)
func retryingInterrupts<Result: BinaryInteger>(_ body: () -> Result) -> (Result, errno: Int32?) {
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
func systemCall<Result: BinaryInteger>(
  _ operation: @autoclosure () -> String, _ body: () -> Result
) throws(SocketError) -> Result {
  let (result, error) = retryingInterrupts(body)
  if let error { throw SocketError.systemCall(operation(), errno: error) }
  return result
}
