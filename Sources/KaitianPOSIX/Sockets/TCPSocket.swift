import Glibc

/// A TCP socket that owns its file descriptor and closes it when the last reference goes away.
///
/// Blocking operations take a `Deadline` and are built on `poll(2)` plus `MSG_DONTWAIT`, so they
/// behave the same whether or not the descriptor is in nonblocking mode, and never wait past the
/// deadline. Sends use `MSG_NOSIGNAL`: a vanished peer is an error, never a `SIGPIPE`.
///
/// Threading: the type is `Sendable` and each method is safe to call from any thread, but two
/// threads reading (or two writing) at the same time interleave their bytes, so each direction
/// should have one user at a time. `shutdown` is the way to wake a thread blocked in another
/// method. The descriptor is closed only in `deinit`, which rules out closing it while another
/// thread still polls it (and the kernel reusing its number under that thread).
public final class TCPSocket: Sendable, CustomStringConvertible {
  private let descriptor: Int32
  /// The local end: for a listener, the bound address with the actual port.
  public let localAddress: SocketAddress
  /// The remote end, or `nil` for a listening socket.
  public let peerAddress: SocketAddress?

  private init(descriptor: Int32, localAddress: SocketAddress, peerAddress: SocketAddress?) {
    self.descriptor = descriptor
    self.localAddress = localAddress
    self.peerAddress = peerAddress
  }

  deinit {
    // Not retried on EINTR: Linux releases the descriptor even when close is interrupted.
    _ = Glibc.close(descriptor)
  }

  /// The port a listener is bound to; useful after listening on port 0.
  public var localPort: UInt16 { localAddress.port }

  /// The peer as `host:port` for log lines, or `listener <address>` for a listening socket.
  public var description: String {
    peerAddress?.description ?? "listener \(localAddress)"
  }

  /// The raw descriptor, for callers that multiplex many sockets with `poll(2)` or `epoll`.
  /// It stays valid as long as this object is alive; never close it or change its ownership.
  public var fileDescriptor: Int32 { descriptor }

  /// Calls `body` with the raw descriptor and keeps the socket alive until `body` returns, so
  /// the descriptor cannot be closed underneath it.
  public func withFileDescriptor<Result, Failure: Error>(
    _ body: (Int32) throws(Failure) -> Result
  ) throws(Failure) -> Result {
    defer { withExtendedLifetime(self) {} }
    return try body(descriptor)
  }

  // MARK: Listening and accepting

  /// Listens on `host` (a numeric address, a name, `0.0.0.0`, or `::` for all IPv4 and IPv6
  /// addresses) and `port` (0 picks a free port; read it back from `localPort`).
  ///
  /// `SO_REUSEADDR` is set so that a restarted job can rebind a port still in `TIME_WAIT`. On
  /// `::` the socket accepts IPv4 too (`IPV6_V6ONLY` off), and if the host has IPv6 disabled it
  /// falls back to `0.0.0.0`, so `::` is a safe default for "everywhere".
  public static func listen(
    host: String, port: UInt16, backlog: Int32 = 512
  ) throws(SocketError) -> TCPSocket {
    var lastError: SocketError?
    for address in try SocketAddress.resolve(host: host, port: port, passive: true) {
      do {
        return try listen(on: address, backlog: backlog)
      } catch {
        lastError = error
      }
    }
    if host == "::", let errno = lastError?.errno, errno == EAFNOSUPPORT || errno == EADDRNOTAVAIL {
      Log.info("socket", "IPv6 is unavailable; listening on 0.0.0.0:\(port) instead of [::]")
      return try listen(host: "0.0.0.0", port: port, backlog: backlog)
    }
    throw lastError!
  }

  /// Listens on an already resolved address; see `listen(host:port:backlog:)`.
  public static func listen(on address: SocketAddress, backlog: Int32 = 512) throws(SocketError)
    -> TCPSocket
  {
    // The listener is nonblocking so that an accept after poll cannot block when another
    // thread took the pending connection first.
    let descriptor = try systemCall("socket for listening on \(address)") {
      socket(
        address.family.rawValue,
        Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0)
    }
    do throws(SocketError) {
      try setIntOption(descriptor, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR")
      if address.family == .ipv6 && address.isUnspecified {
        try setIntOption(descriptor, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 0, "IPV6_V6ONLY")
      }
      _ = try systemCall("bind to \(address)") {
        address.withSockAddr { Glibc.bind(descriptor, $0, $1) }
      }
      _ = try systemCall("listen on \(address)") { Glibc.listen(descriptor, backlog) }
      let local = try localAddress(of: descriptor)
      return TCPSocket(descriptor: descriptor, localAddress: local, peerAddress: nil)
    } catch {
      _ = Glibc.close(descriptor)
      throw error
    }
  }

  /// Waits until a connection arrives or `deadline` passes and returns it as a blocking socket.
  ///
  /// After `shutdown()` on the listener (from any thread) this throws, which is how a server's
  /// accept thread is stopped.
  public func accept(deadline: Deadline) throws(SocketError) -> TCPSocket {
    while true {
      try waitUntilReady(events: POLLIN, deadline: deadline, "accept on \(localAddress)")
      var storage = sockaddr_storage()
      var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
      let (accepted, error) = retryingInterrupts {
        withUnsafeMutablePointer(to: &storage) { pointer in
          pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            Glibc.accept(descriptor, $0, &length)
          }
        }
      }
      if let error {
        // Another thread took the connection, or the client gave up before we accepted it.
        if error == EAGAIN || error == EWOULDBLOCK || error == ECONNABORTED { continue }
        throw SocketError.systemCall("accept on \(localAddress)", errno: error)
      }
      guard let peer = SocketAddress(storage: storage, length: length) else {
        _ = Glibc.close(accepted)
        continue
      }
      do throws(SocketError) {
        // Glibc's Swift overlay lacks accept4, so close-on-exec is set separately; the window
        // only matters to a process that forks in that instant, which Kaitian does not do.
        _ = try systemCall("fcntl(F_SETFD)") { fcntl(accepted, F_SETFD, FD_CLOEXEC) }
        let local = try Self.localAddress(of: accepted)
        return TCPSocket(descriptor: accepted, localAddress: local, peerAddress: peer)
      } catch {
        _ = Glibc.close(accepted)
        throw error
      }
    }
  }

  // MARK: Connecting

  /// Connects to `host:port`, trying each resolved address, and keeps retrying while the
  /// connection is refused, because in a job that starts all ranks at once the server may not be
  /// listening yet. Gives up with a `.timedOut` error at `deadline`.
  public static func connect(
    host: String, port: UInt16, deadline: Deadline
  ) throws(SocketError) -> TCPSocket {
    let addresses = try SocketAddress.resolve(host: host, port: port)
    return try connect(
      to: addresses, name: Endpoint(host: host, port: port).description, deadline: deadline)
  }

  /// Connects to a resolved address, retrying refusals until `deadline`.
  public static func connect(
    to address: SocketAddress, deadline: Deadline
  ) throws(SocketError) -> TCPSocket {
    try connect(to: [address], name: address.description, deadline: deadline)
  }

  private static func connect(
    to addresses: [SocketAddress], name: String, deadline: Deadline
  ) throws(SocketError) -> TCPSocket {
    let start = Deadline.now
    var pause: Duration = .milliseconds(10)
    while true {
      var lastRefusal: SocketError?
      for address in addresses {
        do {
          return try connectOnce(to: address, deadline: deadline)
        } catch {
          guard error.errno == ECONNREFUSED || error.errno == ECONNRESET else { throw error }
          lastRefusal = error
        }
      }
      let remaining = deadline.remaining
      if remaining <= .zero, let lastRefusal {
        let waited = (Deadline.now.monotonicNanoseconds - start.monotonicNanoseconds)
        throw SocketError(
          .timedOut,
          "connect to \(name) timed out after \(Duration.nanoseconds(waited).secondsDescription);"
            + " last attempt: \(lastRefusal); check that the server is running and the address"
            + " and port are right")
      }
      sleep(for: min(pause, remaining))
      pause = min(pause * 2, .milliseconds(500))
    }
  }

  private static func connectOnce(
    to address: SocketAddress, deadline: Deadline
  ) throws(SocketError) -> TCPSocket {
    let descriptor = try systemCall("socket for connecting to \(address)") {
      socket(
        address.family.rawValue,
        Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0)
    }
    do throws(SocketError) {
      let (_, error) = retryingInterrupts {
        address.withSockAddr { Glibc.connect(descriptor, $0, $1) }
      }
      if let error {
        // EALREADY follows a connect that was interrupted and retried: still in progress.
        guard error == EINPROGRESS || error == EALREADY else {
          throw SocketError.systemCall("connect to \(address)", errno: error)
        }
        var ready = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
        let count = try systemCall("poll while connecting to \(address)") {
          poll(&ready, 1, deadline.pollTimeoutMilliseconds)
        }
        if count == 0 { throw SocketError.timedOut("connect to \(address)") }
        var failure: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = try systemCall("getsockopt(SO_ERROR) after connecting to \(address)") {
          getsockopt(descriptor, SOL_SOCKET, SO_ERROR, &failure, &length)
        }
        if failure != 0 { throw SocketError.systemCall("connect to \(address)", errno: failure) }
      }
      try setBlocking(descriptor, true)
      let local = try localAddress(of: descriptor)
      return TCPSocket(descriptor: descriptor, localAddress: local, peerAddress: address)
    } catch {
      _ = Glibc.close(descriptor)
      throw error
    }
  }

  // MARK: Reading and writing

  /// Sends as many bytes as the kernel takes right now, without blocking.
  ///
  /// - Returns: the number of bytes sent, 0 when the send buffer is full (`EAGAIN`).
  /// - Throws: `.peerClosed` when the peer reset the connection, `.systemCall` otherwise.
  public func sendSome(_ bytes: UnsafeRawBufferPointer) throws(SocketError) -> Int {
    guard !bytes.isEmpty else { return 0 }
    let (sent, error) = retryingInterrupts {
      send(descriptor, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
    }
    if let error {
      if error == EAGAIN || error == EWOULDBLOCK { return 0 }
      throw SocketError.systemCall("send to \(self)", errno: error)
    }
    return sent
  }

  /// Receives the bytes that have arrived, up to `buffer.count`, without blocking.
  ///
  /// - Returns: the number of bytes received, 0 when nothing is available (`EAGAIN`).
  /// - Throws: `.peerClosed` at end of stream or reset, `.systemCall` otherwise.
  public func receiveSome(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> Int {
    guard !buffer.isEmpty else { return 0 }
    let (received, error) = retryingInterrupts {
      recv(descriptor, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
    }
    if let error {
      if error == EAGAIN || error == EWOULDBLOCK { return 0 }
      throw SocketError.systemCall("receive from \(self)", errno: error)
    }
    if received == 0 { throw SocketError.peerClosed("receive from \(self)") }
    return received
  }

  /// Fills `buffer` completely, waiting for data until `deadline`.
  public func readExactly(
    into buffer: UnsafeMutableRawBufferPointer, deadline: Deadline
  ) throws(SocketError) {
    var offset = 0
    while offset < buffer.count {
      let received = try receiveSome(
        into: UnsafeMutableRawBufferPointer(rebasing: buffer[offset...]))
      if received == 0 {
        try waitUntilReady(events: POLLIN, deadline: deadline, "read from \(self)")
      }
      offset += received
    }
  }

  /// Reads exactly `count` bytes, waiting for data until `deadline`.
  public func readExactly(_ count: Int, deadline: Deadline) throws(SocketError) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var failure: SocketError?
    bytes.withUnsafeMutableBytes { buffer in
      do throws(SocketError) { try readExactly(into: buffer, deadline: deadline) } catch {
        failure = error
      }
    }
    if let failure { throw failure }
    return bytes
  }

  /// Sends all of `bytes`, waiting for buffer space until `deadline`.
  public func writeAll(_ bytes: UnsafeRawBufferPointer, deadline: Deadline) throws(SocketError) {
    var offset = 0
    while offset < bytes.count {
      let sent = try sendSome(UnsafeRawBufferPointer(rebasing: bytes[offset...]))
      if sent == 0 {
        try waitUntilReady(events: POLLOUT, deadline: deadline, "write to \(self)")
      }
      offset += sent
    }
  }

  /// Sends all of `bytes`, waiting for buffer space until `deadline`.
  public func writeAll(_ bytes: [UInt8], deadline: Deadline) throws(SocketError) {
    var failure: SocketError?
    bytes.withUnsafeBytes { buffer in
      do throws(SocketError) { try writeAll(buffer, deadline: deadline) } catch { failure = error }
    }
    if let failure { throw failure }
  }

  /// Blocks in `poll(2)` until the socket is ready for `events` or something happened to it
  /// (error or hang-up; the next read or write reports which).
  private func waitUntilReady(
    events: Int32, deadline: Deadline, _ operation: @autoclosure () -> String
  ) throws(SocketError) {
    var ready = pollfd(fd: descriptor, events: Int16(events), revents: 0)
    while true {
      let count = try systemCall("poll for \(operation())") {
        poll(&ready, 1, deadline.pollTimeoutMilliseconds)
      }
      if count > 0 { return }
      if deadline.hasPassed { throw SocketError.timedOut(operation()) }
    }
  }

  // MARK: Options and shutdown

  /// Switches `O_NONBLOCK`. The deadline-based methods do not need it; an engine that drives
  /// `sendSome`/`receiveSome` from its own `epoll` loop may want it for other calls.
  public func setNonBlocking(_ enabled: Bool) throws(SocketError) {
    try Self.setBlocking(descriptor, !enabled)
  }

  /// Disables Nagle's algorithm so small control messages are not delayed.
  public func setNoDelay(_ enabled: Bool = true) throws(SocketError) {
    try Self.setIntOption(
      descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, enabled ? 1 : 0, "TCP_NODELAY")
  }

  /// Enables TCP keepalive so a peer whose host died is eventually noticed on an idle link.
  public func setKeepAlive(_ enabled: Bool = true) throws(SocketError) {
    try Self.setIntOption(
      descriptor, SOL_SOCKET, SO_KEEPALIVE, enabled ? 1 : 0, "SO_KEEPALIVE")
  }

  /// Which directions `shutdown` closes.
  public enum ShutdownDirection: Sendable {
    case read, write, both
  }

  /// Shuts the connection down without closing the descriptor. Threads blocked on this socket
  /// in `accept`, `readExactly` or `writeAll` wake up and get an error, so this is the safe way
  /// to stop them from another thread. Failures (such as "not connected") are ignored because
  /// the socket is being abandoned anyway.
  public func shutdown(_ direction: ShutdownDirection = .both) {
    let how: Int32
    switch direction {
    case .read: how = Int32(SHUT_RD)
    case .write: how = Int32(SHUT_WR)
    case .both: how = Int32(SHUT_RDWR)
    }
    _ = retryingInterrupts { Glibc.shutdown(descriptor, how) }
  }

  // MARK: Helpers

  private static func setIntOption(
    _ descriptor: Int32, _ level: Int32, _ option: Int32, _ value: Int32, _ name: String
  ) throws(SocketError) {
    var value = value
    _ = try systemCall("setsockopt(\(name))") {
      setsockopt(descriptor, level, option, &value, socklen_t(MemoryLayout<Int32>.size))
    }
  }

  private static func setBlocking(_ descriptor: Int32, _ blocking: Bool) throws(SocketError) {
    let flags = try systemCall("fcntl(F_GETFL)") { fcntl(descriptor, F_GETFL) }
    let updated = blocking ? flags & ~O_NONBLOCK : flags | O_NONBLOCK
    if updated != flags {
      _ = try systemCall("fcntl(F_SETFL)") { fcntl(descriptor, F_SETFL, updated) }
    }
  }

  private static func localAddress(of descriptor: Int32) throws(SocketError) -> SocketAddress {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    _ = try systemCall("getsockname") {
      withUnsafeMutablePointer(to: &storage) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
          getsockname(descriptor, $0, &length)
        }
      }
    }
    guard let address = SocketAddress(storage: storage, length: length) else {
      throw SocketError(.invalidAddress, "socket has a local address that is not IPv4 or IPv6")
    }
    return address
  }
}
