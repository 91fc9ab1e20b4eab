import Glibc
import Testing

@testable import Kaitian

@Suite struct SharedMemorySegmentTests {
  /// Leftovers of a process that is gone are removed; a live process's segment, names that are
  /// not Kaitian's, and links are left alone.
  @Test func sweepRemovesOnlyDeadProcessesSegments() throws {
    var template = Array("/tmp/kaitian-shm-sweep-XXXXXX".utf8CString)
    let folder = String(cString: try #require(mkdtemp(&template)))
    defer { rmdir(folder) }
    // kill(pid, 0) fails with ESRCH for a pid above the kernel's pid_max: no such process.
    let dead = "kaitian-2147483647-0-7"
    let live = "kaitian-\(getpid())-1-8"
    let foreign = ["kaitian-notapid-0-9", "other-2147483647"]
    for name in [dead, live] + foreign {
      let fd = open("\(folder)/\(name)", O_CREAT | O_WRONLY, 0o600)
      #expect(fd >= 0)
      close(fd)
    }
    let link = "kaitian-2147483646-0-1"
    #expect(symlink("/etc/hostname", "\(folder)/\(link)") == 0)
    defer {
      for name in [dead, live, link] + foreign { unlink("\(folder)/\(name)") }
    }

    SharedMemorySegment.sweepLeftovers(directory: folder)

    #expect(access("\(folder)/\(dead)", F_OK) != 0, "the dead process's segment is removed")
    for kept in [live, link] + foreign {
      var info = stat()
      #expect(lstat("\(folder)/\(kept)", &info) == 0, "\(kept) is kept")
    }
  }

  /// A segment of the right size that another user made, or that others may write, is refused
  /// before it is mapped: its name may have come from a store someone else wrote.
  @Test func segmentsOfOthersAreRefused() throws {
    let name = "/kaitian-test-foreign-\(getpid())"
    let fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0o644)
    #expect(fd >= 0)
    defer { shm_unlink(name) }
    #expect(ftruncate(fd, 4096) == 0)
    fchmod(fd, 0o644)  // the umask may have narrowed it
    close(fd)
    let error = #expect(throws: KaitianError.self) {
      _ = try SharedMemorySegment(opening: name, size: 4096)
    }
    #expect(error?.description.contains("with mode 0644") == true, "\(String(describing: error))")
  }
}
