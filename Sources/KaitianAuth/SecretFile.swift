import Glibc
import KaitianPOSIX

/// Reads a small file that holds a secret (a job token, a Redis password): whole, with the
/// surrounding whitespace trimmed, and with a warning when users other than its owner may read
/// it. Why only a warning: on a shared file system the file may be readable by a group on
/// purpose (one secret for a team's jobs); the user should know, not be stopped.
public enum SecretFile {
  /// Secret files are small; the cap stops a mistaken path such as /dev/zero from hanging.
  public static let maximumBytes = 64 * 1024

  public enum Failure: Error, Sendable {
    case unreadable(errno: Int32)
    case tooLarge
  }

  /// The file's text, trimmed; `what` names the secret in the exposure warning ("job token").
  public static func read(_ path: String, what: String) throws(Failure) -> String {
    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else { throw .unreadable(errno: errno) }
    defer { close(descriptor) }
    var status = stat()
    if fstat(descriptor, &status) == 0,
      let warning = exposureWarning(path: path, mode: status.st_mode, what: what)
    {
      Log.warn("secret", warning)
    }
    var contents: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while contents.count <= maximumBytes {
      let (count, error) = retryingInterrupts { Glibc.read(descriptor, &chunk, chunk.count) }
      if let error { throw .unreadable(errno: error) }
      if count == 0 { return trimmingWhitespace(String(decoding: contents, as: UTF8.self)) }
      contents += chunk[..<count]
    }
    throw .tooLarge
  }

  /// The warning for a secret file that users other than its owner can read, or nil.
  public static func exposureWarning(path: String, mode: mode_t, what: String) -> String? {
    let exposed = mode & 0o077
    guard exposed != 0 else { return nil }
    let octal = String(mode & 0o777, radix: 8)
    return "the \(what) file \(path) has mode 0\(octal): users other than its owner can read "
      + "it; run chmod 600 \(path)"
  }

  private static func trimmingWhitespace(_ text: String) -> String {
    let isSpace: (Character) -> Bool = { $0.isWhitespace }
    guard let first = text.firstIndex(where: { !isSpace($0) }),
      let last = text.lastIndex(where: { !isSpace($0) })
    else { return "" }
    return String(text[first...last])
  }
}
