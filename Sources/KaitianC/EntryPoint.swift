import Kaitian
import KaitianAuth
import KaitianHeader
import KaitianStore

extension ktResult_t {
  /// KaitianError.Code's raw values are the header's numbers, so the mapping is the identity.
  init(_ code: KaitianError.Code) { self.init(rawValue: UInt32(code.rawValue)) }

  init(_ failure: KaitianError?) { self = failure.map { ktResult_t($0.code) } ?? ktSuccess }
}

/// Runs the body of one C function: a thrown error becomes the function's result and its
/// message becomes this thread's ktGetLastError. Nothing escapes as a Swift error or a crash.
/// The body returns the result when it has one besides ktSuccess (ktInProgress).
func statusEntryPoint(
  _ function: String, _ body: (inout Arguments) throws(KaitianError) -> ktResult_t
) -> ktResult_t {
  var arguments = Arguments(function: function)
  do {
    return try body(&arguments)
  } catch {
    // Errors from below may not know the call or rank; the message should always name both.
    let failure = KaitianError(
      error.code, rank: error.rank ?? arguments.rank, call: error.call ?? function, error.cause)
    LastError.record(failure.description)
    return ktResult_t(failure.code)
  }
}

/// Like `statusEntryPoint`, for the functions that return ktSuccess whenever they do not throw.
func entryPoint(
  _ function: String, _ body: (inout Arguments) throws(KaitianError) -> Void
) -> ktResult_t {
  statusEntryPoint(function) { arguments throws(KaitianError) in
    try body(&arguments)
    return ktSuccess
  }
}

/// Stands in for a NULL buffer of zero elements: the Swift API takes non-optional pointers,
/// and nothing is ever read or written through this one.
nonisolated(unsafe) private let emptyBuffer = UnsafeMutableRawPointer.allocate(
  byteCount: 16, alignment: 16)

/// Checks and converts the raw arguments of one C call. Its errors name the C function and,
/// once the communicator is known, the rank, like the communicator's own errors.
struct Arguments {
  let function: String
  var rank: Int?

  init(function: String) { self.function = function }

  func invalid(_ cause: String) -> KaitianError {
    KaitianError(.invalidArgument, rank: rank, call: function, cause)
  }

  /// A pointer the header requires: handles, outputs, keys.
  func required<Pointer>(_ pointer: Pointer?, _ name: String) throws(KaitianError) -> Pointer {
    guard let pointer else { throw invalid("\(name) is NULL") }
    return pointer
  }

  func string(_ text: UnsafePointer<CChar>?, _ name: String) throws(KaitianError) -> String {
    String(cString: try required(text, name))
  }

  /// The communicator behind a handle; later errors of this call name its rank.
  mutating func communicator(_ handle: ktComm_t?) throws(KaitianError) -> Communicator {
    let communicator = CommHandle.from(try required(handle, "comm")).communicator
    rank = communicator.rank
    return communicator
  }

  /// A size_t count: the importer maps size_t to Int, so values above Int.max arrive negative.
  func count(_ value: Int, _ name: String = "count") throws(KaitianError) -> Int {
    guard value >= 0 else { throw invalid("\(name) \(UInt(bitPattern: value)) is too large") }
    return value
  }

  /// A size_t array of one count per rank, and its sum (the elements of the packed buffer).
  func counts(
    _ pointer: UnsafePointer<Int>?, ranks: Int, _ name: String
  ) throws(KaitianError) -> (counts: [Int], total: Int) {
    let raw = UnsafeBufferPointer(start: try required(pointer, name), count: ranks)
    var counts: [Int] = []
    var total = 0
    for (rank, value) in raw.enumerated() {
      let count = try count(value, "\(name)[\(rank)]")
      let (sum, overflow) = total.addingReportingOverflow(count)
      if overflow { throw invalid("the sum of \(name) overflows") }
      counts.append(count)
      total = sum
    }
    return (counts, total)
  }

  func dataType(_ raw: ktDataType_t) throws(KaitianError) -> DataType {
    let value = Int32(bitPattern: raw.rawValue)
    guard let dataType = DataType(rawValue: value) else {
      throw invalid("datatype \(value) is not a ktDataType_t (0 to \(DataType.allCases.count - 1))")
    }
    return dataType
  }

  func op(_ raw: ktRedOp_t) throws(KaitianError) -> ReduceOp {
    let value = Int32(bitPattern: raw.rawValue)
    guard let op = ReduceOp(rawValue: value) else {
      throw invalid("op \(value) is not a ktRedOp_t (0 to \(ReduceOp.allCases.count - 1))")
    }
    return op
  }

  /// A buffer of `count` elements the call reads; NULL is allowed only when it is empty.
  func input(
    _ pointer: UnsafeRawPointer?, count: Int, _ name: String = "sendbuff"
  ) throws(KaitianError) -> UnsafeRawPointer {
    UnsafeRawPointer(try output(UnsafeMutableRawPointer(mutating: pointer), count: count, name))
  }

  /// A buffer of `count` elements the call writes; NULL is allowed only when it is empty.
  func output(
    _ pointer: UnsafeMutableRawPointer?, count: Int, _ name: String = "recvbuff"
  ) throws(KaitianError) -> UnsafeMutableRawPointer {
    if let pointer { return pointer }
    guard count == 0 else { throw invalid("\(name) is NULL but holds \(count) elements") }
    return emptyBuffer
  }

  /// A buffer used on the root only: NULL passes through (the communicator checks the root's).
  func rootOnly(_ pointer: UnsafeMutableRawPointer?, count: Int) -> UnsafeMutableRawPointer? {
    pointer ?? (count == 0 ? emptyBuffer : nil)
  }

  /// Seconds from C as a Duration; negative or infinite means no limit (nil).
  func timeout(_ seconds: Double, _ name: String = "timeoutSeconds") throws(KaitianError)
    -> Duration?
  {
    if seconds.isNaN { throw invalid("\(name) is NaN") }
    guard seconds >= 0, seconds < 1e9 else { return nil }
    return .nanoseconds(Int64(seconds * 1e9))
  }

  /// Like `timeout`, for store calls that need a finite wait: no limit becomes a century.
  func storeTimeout(_ seconds: Double) throws(KaitianError) -> Duration {
    try timeout(seconds) ?? .seconds(100 * 365 * 86_400)
  }

  /// The job token from `text`, else from KAITIAN_TOKEN(_FILE).
  func token(_ text: UnsafePointer<CChar>?, _ name: String) throws(KaitianError) -> JobToken {
    do {
      if let text { return try JobToken(String(cString: text), origin: name) }
      if let token = try JobToken.fromEnvironment() { return token }
    } catch {
      throw invalid(error.description)
    }
    throw invalid(
      "no job token: set KAITIAN_TOKEN (or KAITIAN_TOKEN_FILE) to the job's secret, or pass "
        + name)
  }

  /// A store failure as this call's error, classified by what the caller can do about it.
  func storeFailure(_ error: StoreError) -> KaitianError {
    let code: KaitianError.Code =
      switch error.code {
      case .timeout: .timeout
      case .invalidArgument, .valueTooLarge: .invalidArgument
      case .connectionFailed: .systemError
      default: .remoteError
      }
    return KaitianError(code, rank: rank, call: function, error.description)
  }
}
