import ArgumentParser
import KaitianAuth

/// `--token-file`, the same in every command that serves or joins a job's store: the file wins
/// over KAITIAN_TOKEN and KAITIAN_TOKEN_FILE, which are read otherwise. Read here, never put
/// into this process's environment: the workers get the token from the launcher explicitly.
struct TokenOptions: ParsableArguments {
  @Option(
    help: ArgumentHelp(
      "File holding the job token (overrides KAITIAN_TOKEN and KAITIAN_TOKEN_FILE).",
      valueName: "file"))
  var tokenFile: String?

  /// The token from --token-file, else from the environment; nil when neither gives one.
  func token() throws(JobTokenError) -> JobToken? {
    if let tokenFile { return try JobToken.fromFile(tokenFile) }
    return try JobToken.fromEnvironment()
  }

  /// `token()`, where a missing token is an error that says what to set.
  func requiredToken() throws(JobTokenError) -> JobToken {
    if let tokenFile { return try JobToken.fromFile(tokenFile) }
    return try JobToken.requiredFromEnvironment()
  }
}
