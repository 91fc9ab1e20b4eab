import Glibc

/// Whole-file reads and writes with errors that name the file.
public enum TextFile {
  public static func read(_ path: String, limit: Int = 256 << 20) throws(FileError) -> [UInt8] {
    let descriptor = open(path, O_RDONLY | O_CLOEXEC)
    guard descriptor >= 0 else {
      throw FileError("cannot read \(path): \(errnoText(errno))")
    }
    defer { close(descriptor) }
    var contents: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
      let (count, error) = retryingInterrupts { Glibc.read(descriptor, &chunk, chunk.count) }
      if let error {
        throw FileError("cannot read \(path): \(errnoText(error))")
      }
      if count == 0 { return contents }
      contents += chunk[0..<count]
      guard contents.count <= limit else {
        throw FileError("\(path) is larger than \(limit) bytes; is it the right file?")
      }
    }
  }

  /// Writes `bytes` to a temporary file and renames it over `path`, so a reader never sees a
  /// half-written file (rename is atomic on POSIX; the fsync first makes the new contents
  /// survive a crash that follows the rename). The temporary file has a random name and is
  /// created new (O_EXCL, O_NOFOLLOW): in a directory others can write, a name they can predict
  /// could be a link they placed, and the write would land in its target.
  public static func write(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws(FileError)
  {
    let temporary = "\(path).\(String(UInt64.random(in: .min ... .max), radix: 16)).partial"
    let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
    guard descriptor >= 0 else {
      throw FileError("cannot write \(path): \(errnoText(errno))")
    }
    if let error = bytes.withUnsafeBytes({ writeFully(descriptor, $0) }) {
      close(descriptor)
      unlink(temporary)
      throw FileError("cannot write \(path): \(errnoText(error))")
    }
    guard fsync(descriptor) == 0, close(descriptor) == 0, rename(temporary, path) == 0 else {
      let reason = errnoText(errno)
      unlink(temporary)
      throw FileError("cannot write \(path): \(reason)")
    }
  }

  public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

  public static func isDirectory(_ path: String) -> Bool {
    var status = stat()
    return stat(path, &status) == 0 && (status.st_mode & S_IFMT) == S_IFDIR
  }
}

/// A file that could not be read or written, named in the message.
public struct FileError: Error, CustomStringConvertible {
  public let description: String
  public init(_ description: String) { self.description = description }
}
