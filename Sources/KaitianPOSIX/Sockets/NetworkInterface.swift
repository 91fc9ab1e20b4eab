import Glibc

/// Chooses the local address of a named network interface, as `NCCL_SOCKET_IFNAME` does.
///
/// Multi-homed hosts (a slow management network plus a fast data network) must advertise the
/// address of the right interface to their peers; a hostname lookup would often pick the wrong
/// one. Set `KAITIAN_SOCKET_IFNAME` to the interface name (for example `eth1` or `ib0`).
public enum NetworkInterfaces {
  /// The environment variable naming the interface to use.
  public static let environmentVariable = "KAITIAN_SOCKET_IFNAME"

  /// The address of the interface named in `KAITIAN_SOCKET_IFNAME`, or `nil` when it is unset.
  public static func addressFromEnvironment(
    family: SocketAddress.Family? = nil
  ) throws(SocketError) -> SocketAddress? {
    guard let name = EnvironmentVariable.value(environmentVariable) else { return nil }
    return try address(ofInterface: name, family: family)
  }

  /// The address (with port 0) of the interface `name` that is up.
  ///
  /// - Parameter family: the family to require; `nil` prefers IPv4 and falls back to IPv6.
  ///   Among IPv6 addresses a global one is preferred over a link-local one.
  public static func address(
    ofInterface name: String, family: SocketAddress.Family? = nil
  ) throws(SocketError) -> SocketAddress {
    var list: UnsafeMutablePointer<ifaddrs>?
    _ = try systemCall("getifaddrs") { getifaddrs(&list) }
    defer { freeifaddrs(list) }
    var candidates: [SocketAddress] = []
    var allNames: Set<String> = []
    var entry = list
    while let current = entry {
      entry = current.pointee.ifa_next
      let interfaceName = String(cString: current.pointee.ifa_name)
      allNames.insert(interfaceName)
      guard interfaceName == name, current.pointee.ifa_flags & UInt32(IFF_UP) != 0,
        let pointer = current.pointee.ifa_addr, let address = SocketAddress(pointer: pointer)
      else { continue }
      if family == nil || address.family == family { candidates.append(address) }
    }
    func rank(_ address: SocketAddress) -> Int {
      if address.family == .ipv4 { return 0 }
      return address.isIPv6LinkLocal ? 2 : 1
    }
    guard let best = candidates.min(by: { rank($0) < rank($1) }) else {
      let wanted = family.map { $0 == .ipv4 ? " IPv4" : " IPv6" } ?? ""
      let available = allNames.sorted().joined(separator: ", ")
      throw SocketError(
        .noSuchInterface,
        "network interface '\(name)' does not exist, is down, or has no\(wanted) address; "
          + "available interfaces: \(available); check \(environmentVariable)")
    }
    return best
  }
}
