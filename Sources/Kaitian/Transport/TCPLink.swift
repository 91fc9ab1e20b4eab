import Glibc
import KaitianPOSIX
import Synchronization

/// A link to a rank over one authenticated TCP connection in nonblocking mode.
///
/// Received bytes that a reduction reads go through a staging buffer, so a message boundary may
/// fall anywhere in a read; copies go straight into the destination once the staging is drained.
/// With `integrity`, the stream is carried in MAC'd records and staging holds only checked bytes
/// (see `FrameIntegrity`).
final class TCPLink: PeerLink, @unchecked Sendable {
  let peer: Int
  var lastTagSent: CallKey?
  var lastTagReceived: CallKey?
  var waitSource: LinkWaitSource { .socket(fd: fd) }

  private let socket: TCPSocket
  private let fd: Int32
  private let staging: UnsafeMutableRawBufferPointer
  private var stagedStart = 0
  private var stagedEnd = 0
  private let isShutDown = Atomic<Bool>(false)
  private static let stagingBytes = 1 << 20
  /// With KAITIAN_INTEGRITY: seals what is sent and opens what arrives, in MAC'd records.
  private let integrity: FrameIntegrity?

  init(peer: Int, socket: TCPSocket, integrity: FrameIntegrity? = nil) throws(KaitianError) {
    self.peer = peer
    self.socket = socket
    self.integrity = integrity
    self.fd = socket.fileDescriptor
    self.staging = .allocate(byteCount: Self.stagingBytes, alignment: 64)
    do {
      try socket.setNonBlocking(true)
    } catch {
      staging.deallocate()
      throw .system("cannot make the connection to rank \(peer) nonblocking: \(error)")
    }
  }

  deinit { staging.deallocate() }

  func sendSome(_ bytes: UnsafeRawBufferPointer) throws(KaitianError) -> Int {
    guard let integrity else { return try send(bytes) }
    // One record at a time: the next is sealed once the last is out.
    try integrity.flush(send)
    guard !integrity.hasUnsentRecord, !bytes.isEmpty else { return 0 }
    let taken = integrity.seal(bytes)
    try integrity.flush(send)
    return taken
  }

  func receiveSome(into buffer: UnsafeMutableRawBufferPointer) throws(KaitianError) -> Int {
    if stagedEnd > stagedStart {
      let n = min(buffer.count, stagedEnd - stagedStart)
      buffer.baseAddress!.copyMemory(from: staging.baseAddress! + stagedStart, byteCount: n)
      stagedStart += n
      return n
    }
    return try read(into: buffer.baseAddress!, count: buffer.count)
  }

  /// A message ends once its last record is out (a MAC'd record is sealed whole).
  func finishSentMessage(length: Int) throws(KaitianError) -> Bool {
    guard let integrity else { return true }
    try integrity.flush(send)
    return !integrity.hasUnsentRecord
  }

  /// Sends what the socket takes now, without a MAC.
  private func send(_ bytes: UnsafeRawBufferPointer) throws(KaitianError) -> Int {
    var sent = 0
    while sent < bytes.count {
      let n: Int
      do {
        n = try socket.sendSome(UnsafeRawBufferPointer(rebasing: bytes[sent...]))
      } catch {
        throw lost(while: "sending", error)
      }
      if n == 0 { break }
      sent += n
    }
    return sent
  }

  func consumeSome(
    limit: Int, granularity: Int, _ body: (UnsafeRawBufferPointer) -> Void
  ) throws(KaitianError) -> Int {
    var consumed = 0
    while consumed < limit {
      var usable = min(stagedEnd - stagedStart, limit - consumed)
      usable -= usable % granularity
      if usable > 0 {
        body(UnsafeRawBufferPointer(start: staging.baseAddress! + stagedStart, count: usable))
        stagedStart += usable
        consumed += usable
        continue
      }
      // Keep the partial element, refill behind it.
      let kept = stagedEnd - stagedStart
      if stagedStart > 0 {
        staging.baseAddress!.copyMemory(from: staging.baseAddress! + stagedStart, byteCount: kept)
        stagedStart = 0
        stagedEnd = kept
      }
      let n = try read(into: staging.baseAddress! + stagedEnd, count: Self.stagingBytes - stagedEnd)
      if n == 0 { break }
      stagedEnd += n
    }
    return consumed
  }

  func shutDown() {
    if !isShutDown.exchange(true, ordering: .sequentiallyConsistent) {
      socket.shutdown()
    }
  }

  /// Bytes from the peer, checked ones only with `integrity`.
  private func read(into target: UnsafeMutableRawPointer, count: Int) throws(KaitianError) -> Int {
    let buffer = UnsafeMutableRawBufferPointer(start: target, count: count)
    guard let integrity else { return try readSocket(into: buffer) }
    return try integrity.receive(into: buffer, peer: peer, readSocket)
  }

  private func readSocket(into buffer: UnsafeMutableRawBufferPointer) throws(KaitianError) -> Int {
    do {
      return try socket.receiveSome(into: buffer)
    } catch {
      throw lost(while: "receiving", error)
    }
  }

  private func lost(while action: String, _ error: SocketError) -> KaitianError {
    .remote(
      "connection to rank \(peer) lost while \(action) (\(error)); the peer process may have "
        + "exited or the network failed")
  }
}
