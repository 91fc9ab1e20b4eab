import Glibc
import KaitianStore

/// A POSIX shared-memory mapping (shm_open + mmap) that the ranks of one host share.
///
/// The creator unlinks the name once every peer has mapped it, so a crashed job leaves nothing
/// behind in /dev/shm; the memory lives until the last process unmaps it.
final class SharedMemorySegment: @unchecked Sendable {
  let name: String
  let base: UnsafeMutableRawPointer
  let size: Int
  private var isLinked: Bool

  /// Creates and maps a new zero-filled segment.
  init(creating name: String, size: Int) throws(KaitianError) {
    let fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0o600)
    guard fd >= 0 else {
      throw .system("shm_open(\(name)) failed: \(errnoText()); is /dev/shm mounted and writable?")
    }
    defer { close(fd) }
    guard ftruncate(fd, off_t(size)) == 0 else {
      let text = errnoText()
      shm_unlink(name)
      throw .system(
        "cannot size shared memory \(name) to \(size) bytes: \(text); /dev/shm may be full")
    }
    guard let base = Self.map(fd: fd, size: size) else {
      let text = errnoText()
      shm_unlink(name)
      throw .system("mmap of shared memory \(name) (\(size) bytes) failed: \(text)")
    }
    self.name = name
    self.base = base
    self.size = size
    self.isLinked = true
  }

  /// Maps a segment another rank created.
  init(opening name: String, size: Int) throws(KaitianError) {
    let fd = shm_open(name, O_RDWR, 0)
    guard fd >= 0 else {
      throw .system(
        "cannot open shared memory \(name): \(errnoText()); the peer may have exited, or the "
          + "ranks do not share /dev/shm (separate containers need --ipc=host)")
    }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0, Int(info.st_size) == size else {
      throw .system("shared memory \(name) has an unexpected size (wanted \(size) bytes)")
    }
    guard let base = Self.map(fd: fd, size: size) else {
      throw .system("mmap of shared memory \(name) failed: \(errnoText())")
    }
    self.name = name
    self.base = base
    self.size = size
    self.isLinked = false
  }

  /// Removes the name; mappings stay valid.
  func unlink() {
    if isLinked {
      shm_unlink(name)
      isLinked = false
    }
  }

  deinit {
    unlink()
    munmap(base, size)
  }

  private static func map(fd: Int32, size: Int) -> UnsafeMutableRawPointer? {
    let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    guard let address, address != MAP_FAILED else { return nil }
    return address
  }
}

/// The current errno as text, for messages.
func errnoText() -> String { SocketError.errnoDescription(errno) }
