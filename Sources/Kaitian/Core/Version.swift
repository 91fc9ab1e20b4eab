/// Kaitian's version; `code` is encoded as KAITIAN_VERSION_CODE in include/kaitian.h.
public enum KaitianVersion {
  public static let major = 0
  public static let minor = 1
  public static let patch = 0
  public static var code: Int { major * 10_000 + minor * 100 + patch }
  public static var string: String { "\(major).\(minor).\(patch)" }
}
