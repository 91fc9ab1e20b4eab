import Glibc

/// Whole-file writes that readers never see half done: the text goes to a temporary file in
/// the same directory, which is then renamed over the target (rename is atomic on POSIX).
enum TextFile {
  struct WriteError: Error, CustomStringConvertible {
    let description: String
  }

  static func write(_ text: String, to path: String, mode: mode_t = 0o644) throws(WriteError) {
    let partial = "\(path).\(getpid()).partial"
    let fail = { (step: String) in
      WriteError(description: "cannot \(step) \(path): \(String(cString: strerror(errno)))")
    }
    let fd = open(partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else { throw fail("write") }
    let bytes = Array(text.utf8)
    var written = 0
    while written < bytes.count {
      let count = bytes[written...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
      if count < 0 && errno == EINTR { continue }
      guard count > 0 else {
        let error = fail("write")
        close(fd)
        unlink(partial)
        throw error
      }
      written += count
    }
    guard fsync(fd) == 0, close(fd) == 0, rename(partial, path) == 0 else {
      let error = fail("save")
      unlink(partial)
      throw error
    }
  }
}
