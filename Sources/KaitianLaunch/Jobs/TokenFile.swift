import KaitianAuth
import KaitianPOSIX

/// Writes a token to a file only its owner can read, atomically (TextFile).
package enum TokenFile {
  package static func write(_ token: JobToken, to path: String) throws(LaunchError) {
    do {
      try TextFile.write(path, Array((token.stringValue + "\n").utf8), mode: 0o600)
    } catch {
      throw LaunchError("cannot write the token to \(path): \(error)")
    }
  }
}
