import Glibc
import KaitianPOSIX

/// The shared secret of one job: every rank and the store prove they know it before they talk.
///
/// It keeps strangers on a shared cluster from joining a job, reading its store, or feeding it
/// tensors. The launcher generates one (`generate()`) and passes it to every process in
/// `KAITIAN_TOKEN`; processes read it back with `fromEnvironment()`. The secret never appears
/// in `description`, so a token can be logged safely.
public struct JobToken: Sendable, CustomStringConvertible {
  /// Environment variable holding the token text.
  public static let environmentVariable = "KAITIAN_TOKEN"
  /// Environment variable holding the path of a file whose content is the token.
  public static let fileEnvironmentVariable = "KAITIAN_TOKEN_FILE"
  /// The shortest token accepted, in bytes. Why: the handshake's HMAC is only as strong as the
  /// key, and a short or guessable word ("secret", "test") can be found by trying the common
  /// ones against a captured handshake. 16 bytes of random hex is 64 bits; generated tokens
  /// have 32 random bytes (64 hex digits).
  public static let minimumBytes = 16

  /// The token text as UTF-8, the HMAC key.
  package let secret: [UInt8]
  /// Where the token came from, for error messages ("KAITIAN_TOKEN", a file path, ...).
  public let origin: String

  /// Wraps token text given by the caller: at least `minimumBytes` bytes of UTF-8.
  public init(_ text: String, origin: String = "the caller") throws(JobTokenError) {
    guard !text.isEmpty else { throw .empty(origin) }
    guard text.utf8.count >= Self.minimumBytes else {
      throw .tooShort(origin, bytes: text.utf8.count)
    }
    self.secret = Array(text.utf8)
    self.stringValue = text
    self.origin = origin
  }

  /// The token text, to pass on to child processes in `KAITIAN_TOKEN`. Treat it as a secret.
  public let stringValue: String

  /// A fresh token of 32 random bytes from the system generator, written as 64 hex digits so
  /// it can travel in an environment variable.
  public static func generate() -> JobToken {
    var generator = SystemRandomNumberGenerator()
    let digits = Array("0123456789abcdef")
    var text = ""
    for _ in 0..<32 {
      let byte = UInt8.random(in: .min ... .max, using: &generator)
      text.append(digits[Int(byte >> 4)])
      text.append(digits[Int(byte & 0xf)])
    }
    // Cannot fail: the text is 64 characters long.
    return try! JobToken(text, origin: "a generated token")
  }

  /// The token from `KAITIAN_TOKEN`, else from the file named by `KAITIAN_TOKEN_FILE` (with
  /// surrounding whitespace trimmed), else `nil`.
  public static func fromEnvironment() throws(JobTokenError) -> JobToken? {
    if let text = EnvironmentVariable.value(environmentVariable) {
      return try JobToken(text, origin: environmentVariable)
    }
    if let path = EnvironmentVariable.value(fileEnvironmentVariable) {
      let origin = "\(fileEnvironmentVariable)=\(path)"
      return try JobToken(try readFile(path, origin: origin), origin: origin)
    }
    return nil
  }

  /// The token in the file at `path` (surrounding whitespace trimmed; a warning when other
  /// users can read the file).
  public static func fromFile(_ path: String) throws(JobTokenError) -> JobToken {
    try JobToken(try readFile(path, origin: path), origin: path)
  }

  /// Like `fromEnvironment()`, but a missing token is an error that tells the user what to set.
  public static func requiredFromEnvironment() throws(JobTokenError) -> JobToken {
    guard let token = try fromEnvironment() else { throw .missing }
    return token
  }

  public var description: String { "JobToken(from \(origin), \(secret.count) bytes)" }

  private static func readFile(_ path: String, origin: String) throws(JobTokenError) -> String {
    do throws(SecretFile.Failure) {
      return try SecretFile.read(path, what: "job token")
    } catch {
      switch error {
      case .unreadable(let code): throw .unreadable(origin, errno: code)
      case .tooLarge: throw .tooLarge(origin)
      }
    }
  }
}

/// Why no job token could be obtained.
public struct JobTokenError: Error, CustomStringConvertible, Sendable {
  public struct Code: Hashable, Sendable {
    private enum Base: Hashable, Sendable { case missing, empty, tooShort, unreadable, tooLarge }
    private let base: Base
    /// Neither `KAITIAN_TOKEN` nor `KAITIAN_TOKEN_FILE` is set.
    public static let missing = Code(base: .missing)
    /// The token is the empty string (or a file of only whitespace).
    public static let empty = Code(base: .empty)
    /// The token is shorter than `JobToken.minimumBytes`.
    public static let tooShort = Code(base: .tooShort)
    /// The token file cannot be opened or read.
    public static let unreadable = Code(base: .unreadable)
    /// The token file is implausibly large for a token.
    public static let tooLarge = Code(base: .tooLarge)
  }

  public let code: Code
  public let description: String

  static let missing = JobTokenError(
    code: .missing,
    description: "no job token: set \(JobToken.environmentVariable) (or "
      + "\(JobToken.fileEnvironmentVariable) to a file holding it) to the same secret on every "
      + "rank; `kaitian run` does this for you")

  static func empty(_ origin: String) -> JobTokenError {
    JobTokenError(
      code: .empty,
      description: "the job token from \(origin) is empty; set it to a non-empty secret")
  }

  static func tooShort(_ origin: String, bytes: Int) -> JobTokenError {
    JobTokenError(
      code: .tooShort,
      description: "the job token from \(origin) is \(bytes) bytes long; a token needs at least "
        + "\(JobToken.minimumBytes) (a short word can be guessed): use `kaitian run`, which "
        + "generates one, or `kaitian store serve --generate-token --token-file FILE`, or "
        + "`openssl rand -hex 32`")
  }

  static func unreadable(_ origin: String, errno: Int32) -> JobTokenError {
    JobTokenError(
      code: .unreadable,
      description: "cannot read the job token file (\(origin)): "
        + "\(errnoText(errno)); check the path and its permissions")
  }

  static func tooLarge(_ origin: String) -> JobTokenError {
    JobTokenError(
      code: .tooLarge,
      description: "the job token file (\(origin)) is larger than \(SecretFile.maximumBytes) "
        + "bytes; it should hold only the token")
  }
}
