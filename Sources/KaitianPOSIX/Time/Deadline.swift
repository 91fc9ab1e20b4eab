import Glibc

/// A point in time on the monotonic clock, after which a blocking operation gives up.
///
/// Every blocking call in Kaitian takes a deadline rather than a timeout, so that a sequence of
/// steps (connect, handshake, request) shares one budget instead of each step restarting it.
/// The monotonic clock is used because wall-clock jumps (NTP) must not fire or stall timeouts.
public struct Deadline: Sendable, Hashable, Comparable, CustomStringConvertible {
  /// Nanoseconds on `CLOCK_MONOTONIC`; `Int64.max` means never.
  public let monotonicNanoseconds: Int64

  public init(monotonicNanoseconds: Int64) {
    self.monotonicNanoseconds = monotonicNanoseconds
  }

  /// The current instant.
  public static var now: Deadline {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return Deadline(monotonicNanoseconds: Int64(spec.tv_sec) * 1_000_000_000 + Int64(spec.tv_nsec))
  }

  /// A deadline that never passes, for waits that only end by an event or a shutdown.
  public static let never = Deadline(monotonicNanoseconds: .max)

  /// The instant `duration` from now; negative durations give a deadline that has passed.
  public static func after(_ duration: Duration) -> Deadline {
    let (sum, overflow) = now.monotonicNanoseconds.addingReportingOverflow(duration.nanoseconds)
    return overflow
      ? (duration > .zero ? .never : Deadline(monotonicNanoseconds: 0))
      : Deadline(
        monotonicNanoseconds: sum)
  }

  public var isNever: Bool { monotonicNanoseconds == .max }

  public var hasPassed: Bool { !isNever && Deadline.now >= self }

  /// Time left until the deadline, zero once it has passed.
  public var remaining: Duration {
    if isNever { return .seconds(Int64.max) }
    let left = monotonicNanoseconds - Deadline.now.monotonicNanoseconds
    return left > 0 ? .nanoseconds(left) : .zero
  }

  /// The `timeout` argument for `poll(2)`: milliseconds rounded up so that a poll never returns
  /// just before the deadline, or -1 for never.
  public var pollTimeoutMilliseconds: Int32 {
    if isNever { return -1 }
    let left = monotonicNanoseconds - Deadline.now.monotonicNanoseconds
    if left <= 0 { return 0 }
    return Int32(clamping: (left + 999_999) / 1_000_000)
  }

  /// The deadline as an absolute `timespec` on `CLOCK_MONOTONIC`, for timed condition waits.
  var timespecValue: timespec {
    timespec(
      tv_sec: Int(monotonicNanoseconds / 1_000_000_000),
      tv_nsec: Int(monotonicNanoseconds % 1_000_000_000))
  }

  public static func < (lhs: Deadline, rhs: Deadline) -> Bool {
    lhs.monotonicNanoseconds < rhs.monotonicNanoseconds
  }

  public var description: String {
    isNever ? "never" : "in \(remaining.secondsDescription)"
  }
}

extension Duration {
  /// The duration in whole nanoseconds, saturating at the bounds of `Int64`.
  package var nanoseconds: Int64 {
    let (seconds, attoseconds) = components
    let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
    if overflow { return seconds > 0 ? .max : .min }
    let (sum, overflow2) = scaled.addingReportingOverflow(attoseconds / 1_000_000_000)
    if overflow2 { return seconds > 0 ? .max : .min }
    return sum
  }

  /// The duration in whole milliseconds, saturating at the bounds of `Int64` (computed from
  /// the components, not from `nanoseconds`, whose range ends at 292 years, so that every
  /// millisecond count read from the wire encodes back to itself).
  package var milliseconds: Int64 {
    let (seconds, attoseconds) = components
    let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000)
    if overflow { return seconds > 0 ? .max : .min }
    let (sum, overflow2) = scaled.addingReportingOverflow(attoseconds / 1_000_000_000_000_000)
    if overflow2 { return seconds > 0 ? .max : .min }
    return sum
  }

  /// "1.5 s" or "250 ms": short and readable in error messages.
  package var secondsDescription: String {
    let ms = milliseconds
    if ms < 1000 { return "\(ms) ms" }
    let tenths = ms / 100
    return "\(tenths / 10).\(tenths % 10) s"
  }
}
