import Glibc
import Synchronization

/// Process-wide diagnostic log, one line per message on stderr, in the spirit of `NCCL_DEBUG`.
///
/// The level comes from the environment variable `KAITIAN_DEBUG` (`WARN`, the default, `INFO`,
/// `DEBUG` or `TRACE`; `ERROR` silences warnings) when the log is first used, so a user can turn
/// on detail without rebuilding. Lines look like `kaitian[4711] rank 3 WARN store: message`.
///
/// Thread-safe: every line is written with a single `write(2)`, so lines from different threads
/// never interleave, and the level and prefix are atomics or mutex-guarded.
public enum Log {
  /// Severity, ordered from most to least important.
  public enum Level: Int, Sendable, Comparable, CaseIterable {
    case error = 0
    case warn
    case info
    case debug
    case trace

    /// Parses a `KAITIAN_DEBUG` value, case-insensitively; `nil` for an unknown word.
    public init?(name: String) {
      switch name.uppercased() {
      case "ERROR": self = .error
      case "WARN", "WARNING": self = .warn
      case "INFO": self = .info
      case "DEBUG": self = .debug
      case "TRACE": self = .trace
      default: return nil
      }
    }

    /// The word printed in each line.
    public var name: String {
      switch self {
      case .error: "ERROR"
      case .warn: "WARN"
      case .info: "INFO"
      case .debug: "DEBUG"
      case .trace: "TRACE"
      }
    }

    public static func < (lhs: Level, rhs: Level) -> Bool { lhs.rawValue < rhs.rawValue }
  }

  private static let storedLevel = Atomic<Int>(levelFromEnvironment().rawValue)
  private static let storedPrefix = Mutex<String>("")
  private static let pid = getpid()

  private static func levelFromEnvironment() -> Level {
    guard let raw = getenv("KAITIAN_DEBUG") else { return .warn }
    return Level(name: String(cString: raw)) ?? .warn
  }

  /// The most detailed level that is printed.
  public static var level: Level {
    Level(rawValue: storedLevel.load(ordering: .relaxed)) ?? .warn
  }

  /// Overrides the level read from `KAITIAN_DEBUG`, for a command-line `--verbose` flag.
  public static func setLevel(_ level: Level) {
    storedLevel.store(level.rawValue, ordering: .relaxed)
  }

  /// Sets a text shown after the pid on every line, such as `rank 3`, so that the interleaved
  /// output of many ranks stays readable. An empty string removes it.
  public static func setPrefix(_ prefix: String) {
    storedPrefix.withLock { $0 = prefix }
  }

  /// Whether messages of `level` are printed; lets callers skip building costly messages.
  public static func isEnabled(_ level: Level) -> Bool { level <= self.level }

  public static func error(_ subsystem: StaticString, _ message: @autoclosure () -> String) {
    write(.error, subsystem, message)
  }

  public static func warn(_ subsystem: StaticString, _ message: @autoclosure () -> String) {
    write(.warn, subsystem, message)
  }

  public static func info(_ subsystem: StaticString, _ message: @autoclosure () -> String) {
    write(.info, subsystem, message)
  }

  public static func debug(_ subsystem: StaticString, _ message: @autoclosure () -> String) {
    write(.debug, subsystem, message)
  }

  public static func trace(_ subsystem: StaticString, _ message: @autoclosure () -> String) {
    write(.trace, subsystem, message)
  }

  private static func write(
    _ level: Level, _ subsystem: StaticString, _ message: () -> String
  ) {
    guard isEnabled(level) else { return }
    let prefix = storedPrefix.withLock { $0 }
    var line = "kaitian[\(pid)] "
    if !prefix.isEmpty { line += prefix + " " }
    line += "\(level.name) \(subsystem): \(message())\n"
    // A short write to stderr is rare; finishing the line keeps it whole. Errors are ignored
    // because a logger has nowhere to report its own failure.
    _ = Array(line.utf8).withUnsafeBytes { writeFully(2, $0) }
  }
}
