import Glibc
import KaitianPOSIX

/// mkdir -p.
package enum Directory {
  package static func create(_ path: String) throws(LaunchError) {
    var prefix = path.hasPrefix("/") ? "/" : ""
    for component in path.split(separator: "/") {
      prefix += component + "/"
      guard mkdir(prefix, 0o755) == 0 || errno == EEXIST else {
        throw LaunchError(
          "cannot create the log directory \(prefix): \(errnoText(errno))")
      }
    }
  }

  /// `create`, and the directory (a link's target) must then belong to this user. Why: the
  /// owner of a job's log directory can read the files written there (the logs, the token) and
  /// replace them (job.json) between writes.
  package static func createOwned(_ path: String) throws(LaunchError) {
    try create(path)
    var status = stat()
    guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
      throw LaunchError("the log directory \(path) is not a directory; choose another")
    }
    guard status.st_uid == geteuid() else {
      throw LaunchError(
        "the log directory \(path) belongs to user \(status.st_uid), not to you (\(geteuid())): "
          + "its owner could read or replace the job's files; choose a directory of your own")
    }
  }
}
