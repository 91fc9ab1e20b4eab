import Glibc
import KaitianPOSIX

/// A port nobody listens on now, for torch's own TCPStore (MASTER_PORT). Another process may
/// take it before the worker binds it, as with torchrun; the window is short.
package enum FreePort {
  package static func pick() throws(LaunchError) -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else {
      throw LaunchError("cannot pick a free port: \(errnoText(errno))")
    }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
      }
    }
    guard bound else {
      throw LaunchError("cannot pick a free port: \(errnoText(errno))")
    }
    return UInt16(bigEndian: address.sin_port)
  }
}
