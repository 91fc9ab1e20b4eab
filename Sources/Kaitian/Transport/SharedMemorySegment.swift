import Glibc
import KaitianPOSIX

/// A POSIX shared-memory mapping (shm_open + mmap) that the ranks of one host share.
///
/// The creator unlinks the name once every peer has mapped it; the memory lives until the last
/// process unmaps it. A process killed between creating and unlinking leaves its segment in
/// /dev/shm, so creating the first segment of a process first removes those of this user's
/// processes that are gone (`sweepLeftovers`).
final class SharedMemorySegment: @unchecked Sendable {
  /// Segment names: `/kaitian-<creator pid>-<rank>-<random>`.
  static let namePrefix = "kaitian-"

  /// Runs `sweepLeftovers` once per process, before its first segment.
  private static let swept: Void = sweepLeftovers(directory: "/dev/shm")

  let name: String
  let base: UnsafeMutableRawPointer
  let size: Int
  private var isLinked: Bool

  /// Creates and maps a new zero-filled segment.
  init(creating name: String, size: Int) throws(KaitianError) {
    Self.swept
    let (fd, openError) = retryingInterrupts { shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0o600) }
    if let openError {
      throw .system(
        "shm_open(\(name)) failed: \(errnoText(openError)); is /dev/shm mounted and writable?")
    }
    defer { close(fd) }
    if let error = retryingInterrupts({ ftruncate(fd, off_t(size)) }).errno {
      shm_unlink(name)
      throw .system(
        "cannot size shared memory \(name) to \(size) bytes: \(errnoText(error)); "
          + "/dev/shm may be full")
    }
    guard let base = Self.map(fd: fd, size: size) else {
      let text = errnoText(errno)
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
    let (fd, openError) = retryingInterrupts { shm_open(name, O_RDWR, 0) }
    if let openError {
      throw .system(
        "cannot open shared memory \(name): \(errnoText(openError)); the peer may have exited, "
          + "or the ranks do not share /dev/shm (separate containers need --ipc=host)")
    }
    defer { close(fd) }
    var info = stat()
    guard retryingInterrupts({ fstat(fd, &info) }).errno == nil, Int(info.st_size) == size else {
      throw .system("shared memory \(name) has an unexpected size (wanted \(size) bytes)")
    }
    // A peer's segment is created by this user with mode 0600 (`init(creating:)`). A name read
    // from the store may have been put there by someone else: their segment would let them read
    // and write this rank's traffic.
    guard info.st_uid == geteuid(), info.st_mode & 0o777 == 0o600 else {
      throw .system(
        "shared memory \(name) belongs to user \(info.st_uid) with mode "
          + "0\(String(info.st_mode & 0o777, radix: 8)), not to this user (\(geteuid())) with 0600: "
          + "it is not a Kaitian peer's segment; check who can write the job's rendezvous store")
    }
    guard let base = Self.map(fd: fd, size: size) else {
      throw .system("mmap of shared memory \(name) failed: \(errnoText(errno))")
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

  /// Unlinks the segments in `directory` (the shm mount) that this user's processes created and
  /// that outlived them: names `kaitian-<pid>-...` whose pid no longer exists, owned by this
  /// user. A pid reused by a live process keeps its segment (left alone, never wrongly removed).
  static func sweepLeftovers(directory: String) {
    guard let folder = opendir(directory) else { return }
    defer { closedir(folder) }
    while let entry = readdir(folder) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
      }
      guard name.hasPrefix(namePrefix),
        let pid = pid_t(name.dropFirst(namePrefix.count).prefix(while: { $0 != "-" })), pid > 0,
        kill(pid, 0) != 0, errno == ESRCH
      else { continue }
      var info = stat()
      guard lstat("\(directory)/\(name)", &info) == 0, info.st_uid == geteuid(),
        info.st_mode & S_IFMT == S_IFREG
      else { continue }
      Glibc.unlink("\(directory)/\(name)")
    }
  }

  /// Maps the whole segment, or nil with `errno` set. mmap reports failure as MAP_FAILED, not
  /// -1, and is never interrupted by a signal, so it is the one call here outside
  /// `retryingInterrupts`.
  private static func map(fd: Int32, size: Int) -> UnsafeMutableRawPointer? {
    let address = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    guard let address, address != MAP_FAILED else { return nil }
    return address
  }
}
