import Glibc

/// Reading the process environment the way every Kaitian setting is read.
public enum EnvironmentVariable {
  /// The value of `name`, or nil when it is unset or empty: an empty variable (`FOO=`) means
  /// "not set" for every Kaitian setting, as it does for torch's.
  public static func value(_ name: String) -> String? {
    guard let raw = getenv(name), raw.pointee != 0 else { return nil }
    return String(cString: raw)
  }
}
