import Glibc

/// An IPv4 or IPv6 socket address (a resolved host plus a port), as the kernel sees it.
///
/// Produced by `resolve(host:port:)`, by interface lookup and by `TCPSocket` for its local and
/// peer ends. Prints as `1.2.3.4:5` or `[::1]:5`, the form `Endpoint(parsing:)` reads back.
public struct SocketAddress: Sendable, CustomStringConvertible {
  public enum Family: Sendable, Hashable {
    case ipv4, ipv6

    var rawValue: Int32 { self == .ipv4 ? AF_INET : AF_INET6 }
  }

  private var storage: sockaddr_storage
  /// The byte length of the address in `storage`, as `bind` and `connect` expect it.
  let length: socklen_t

  /// Wraps an address filled in by the kernel; `nil` when it is neither IPv4 nor IPv6.
  init?(storage: sockaddr_storage, length: socklen_t) {
    guard Int32(storage.ss_family) == AF_INET || Int32(storage.ss_family) == AF_INET6 else {
      return nil
    }
    self.storage = storage
    self.length = length
  }

  /// Copies an address from a `sockaddr` pointer (as in `getaddrinfo` or `getifaddrs` results).
  init?(pointer: UnsafePointer<sockaddr>) {
    let family = Int32(pointer.pointee.sa_family)
    let length: Int
    switch family {
    case AF_INET: length = MemoryLayout<sockaddr_in>.size
    case AF_INET6: length = MemoryLayout<sockaddr_in6>.size
    default: return nil
    }
    var storage = sockaddr_storage()
    withUnsafeMutableBytes(of: &storage) { destination in
      destination.copyMemory(from: UnsafeRawBufferPointer(start: pointer, count: length))
    }
    self.init(storage: storage, length: socklen_t(length))
  }

  public var family: Family { Int32(storage.ss_family) == AF_INET ? .ipv4 : .ipv6 }

  public var port: UInt16 {
    get {
      withUnsafeBytes(of: storage) { raw in
        family == .ipv4
          ? UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
          : UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port)
      }
    }
    set {
      let family = self.family
      withUnsafeMutableBytes(of: &storage) { raw in
        if family == .ipv4 {
          raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self).pointee.sin_port =
            newValue.bigEndian
        } else {
          raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self).pointee.sin6_port =
            newValue.bigEndian
        }
      }
    }
  }

  /// The numeric host, such as `10.0.0.7` or `fe80::1%eth0`, without brackets or port.
  public var host: String {
    var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
    let status = withSockAddr { address, length in
      getnameinfo(
        address, length, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST)
    }
    guard status == 0 else { return "?" }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  /// Whether this is an IPv6 link-local address (fe80::/10), which needs a scope to be useful
  /// and is therefore a poor choice to advertise to other hosts.
  public var isIPv6LinkLocal: Bool {
    guard family == .ipv6 else { return false }
    return withUnsafeBytes(of: storage) { raw in
      let address = raw.load(as: sockaddr_in6.self).sin6_addr
      return withUnsafeBytes(of: address) { $0[0] == 0xfe && ($0[1] & 0xc0) == 0x80 }
    }
  }

  /// Whether the address is the wildcard `0.0.0.0` or `::`.
  public var isUnspecified: Bool { host == "0.0.0.0" || host == "::" }

  public var description: String { Endpoint(host: host, port: port).description }

  /// Calls `body` with the address as the `sockaddr` pointer and length that system calls take.
  public func withSockAddr<Result>(
    _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Result
  ) rethrows -> Result {
    try withUnsafeBytes(of: storage) { raw in
      try body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
    }
  }

  /// Resolves `host` (a numeric IPv4 or IPv6 address, `localhost`, or a DNS name) with
  /// `getaddrinfo`, in the order the system prefers for connecting.
  ///
  /// - Parameter passive: resolve for `bind` rather than `connect`; an empty host then means the
  ///   wildcard address.
  public static func resolve(
    host: String, port: UInt16, passive: Bool = false
  ) throws(SocketError) -> [SocketAddress] {
    var hints = addrinfo()
    hints.ai_family = AF_UNSPEC
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    hints.ai_protocol = Int32(IPPROTO_TCP)
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)
    var list: UnsafeMutablePointer<addrinfo>?
    let status = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &list)
    guard status == 0 else {
      let reason =
        status == EAI_SYSTEM
        ? errnoText(errno) : String(cString: gai_strerror(status))
      throw SocketError(
        .addressResolution,
        "cannot resolve host '\(host)': \(reason); check the host name or use a numeric address")
    }
    defer { freeaddrinfo(list) }
    var addresses: [SocketAddress] = []
    var entry = list
    while let current = entry {
      if let pointer = current.pointee.ai_addr, let address = SocketAddress(pointer: pointer) {
        addresses.append(address)
      }
      entry = current.pointee.ai_next
    }
    guard !addresses.isEmpty else {
      throw SocketError(.addressResolution, "host '\(host)' has no IPv4 or IPv6 address")
    }
    return addresses
  }
}

/// A host and port as a user writes them: `node7:29500`, `10.0.0.7:29500` or `[fe80::1]:29500`.
///
/// Unlike `SocketAddress` it is not resolved, so it can hold host names and travel in
/// environment variables and store values.
public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
  public var host: String
  public var port: UInt16

  public init(host: String, port: UInt16) {
    self.host = host
    self.port = port
  }

  /// Parses `host:port` or `[ipv6]:port`. A bare IPv6 address must be bracketed, because its
  /// colons would otherwise be ambiguous with the port separator.
  public init(parsing text: String) throws(SocketError) {
    func invalid(_ why: String) -> SocketError {
      SocketError(
        .invalidAddress,
        "invalid address '\(text)': \(why); expected host:port or [ipv6]:port")
    }
    let host: Substring
    let portText: Substring
    if text.hasPrefix("[") {
      guard let close = text.firstIndex(of: "]") else { throw invalid("missing ']'") }
      host = text[text.index(after: text.startIndex)..<close]
      let rest = text[text.index(after: close)...]
      guard rest.hasPrefix(":") else { throw invalid("missing ':port' after ']'") }
      portText = rest.dropFirst()
    } else {
      guard let colon = text.lastIndex(of: ":") else { throw invalid("missing ':port'") }
      host = text[..<colon]
      guard !host.contains(":") else { throw invalid("IPv6 addresses must be in brackets") }
      portText = text[text.index(after: colon)...]
    }
    guard !host.isEmpty else { throw invalid("empty host") }
    guard let port = UInt16(portText) else { throw invalid("port must be 0...65535") }
    self.init(host: String(host), port: port)
  }

  /// `host:port`, with brackets around an IPv6 host.
  public var description: String {
    host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
  }
}
