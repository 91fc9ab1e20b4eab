import Glibc
import KaitianStore
import Synchronization

/// Watches the control connections to every peer on its own thread.
///
/// Why: a rank blocked in a collective cannot notice that some other peer died or gave up.
/// The watchdog reads abort notices and end-of-stream on every control connection at once and
/// reports them, so the engine fails within milliseconds instead of at its timeout.
/// Control frames: UInt32 big-endian length, then kind (1 abort, 2 goodbye), Int32 error code,
/// and UTF-8 text. Anything else is treated as a broken peer.
final class Watchdog: @unchecked Sendable {
  private enum FrameKind: UInt8 {
    case abort = 1
    case goodbye = 2
  }

  private static let maximumFrameBytes = 64 * 1024
  private let controls: [TCPSocket?]
  private let endpoints: [PeerEndpoint]
  private let rank: Int
  private let onFailure: @Sendable (KaitianError) -> Void
  private let onDeparture: @Sendable (Int) -> Void
  private let departed: Mutex<Set<Int>> = Mutex([])
  private let wakePipe: (read: Int32, write: Int32)
  private var thread: OSThread?

  /// `onFailure` runs on the watchdog thread with what a peer reported or how it was lost;
  /// `onDeparture` with the rank of a peer that left on purpose.
  init(
    rank: Int, controls: [TCPSocket?], endpoints: [PeerEndpoint],
    onDeparture: @escaping @Sendable (Int) -> Void,
    onFailure: @escaping @Sendable (KaitianError) -> Void
  ) throws(KaitianError) {
    self.onDeparture = onDeparture
    self.rank = rank
    self.controls = controls
    self.endpoints = endpoints
    self.onFailure = onFailure
    var fds: [Int32] = [0, 0]
    precondition(pipe(&fds) == 0, "pipe failed: \(errnoText())")
    wakePipe = (fds[0], fds[1])
    do {
      thread = try OSThread.spawn(name: "kaitian watchdog") { [self] in watch() }
    } catch {
      throw .system("cannot start the watchdog thread: \(error)")
    }
  }

  deinit {
    close(wakePipe.read)
    close(wakePipe.write)
  }

  /// Tells every peer why this rank gave up, best effort and briefly.
  func broadcastAbort(_ error: KaitianError) {
    send(.abort, code: error.code.rawValue, text: error.report)
  }

  /// Tells every peer that this rank is leaving on purpose, then stops watching.
  func stop(sayGoodbye: Bool) {
    if sayGoodbye { send(.goodbye, code: 0, text: "") }
    var byte: UInt8 = 1
    _ = write(wakePipe.write, &byte, 1)
    thread?.join()
    thread = nil
  }

  private func send(_ kind: FrameKind, code: Int32, text: String) {
    var payload: [UInt8] = [kind.rawValue]
    withUnsafeBytes(of: code.bigEndian) { payload.append(contentsOf: $0) }
    payload.append(contentsOf: text.utf8.prefix(Self.maximumFrameBytes - 8))
    var frame: [UInt8] = []
    withUnsafeBytes(of: UInt32(payload.count).bigEndian) { frame.append(contentsOf: $0) }
    frame.append(contentsOf: payload)
    for control in controls {
      try? control?.writeAll(frame, deadline: .after(.milliseconds(200)))
    }
  }

  private func watch() {
    var watched = controls.indices.filter { controls[$0] != nil }
    while !watched.isEmpty {
      var descriptors = [pollfd(fd: wakePipe.read, events: Int16(POLLIN), revents: 0)]
      descriptors += watched.map {
        pollfd(fd: controls[$0]!.fileDescriptor, events: Int16(POLLIN), revents: 0)
      }
      let ready = poll(&descriptors, nfds_t(descriptors.count), -1)
      if ready < 0 && errno == EINTR { continue }
      if descriptors[0].revents != 0 { return }
      var stillWatched: [Int] = []
      for (index, peer) in watched.enumerated() {
        if descriptors[index + 1].revents == 0 {
          stillWatched.append(peer)
        } else if !readFrame(from: peer) {
          stillWatched.append(peer)
        }
      }
      watched = stillWatched
    }
  }

  /// Reads one event from a readable control connection; returns true when the peer is done
  /// (left, aborted, or lost) and need not be watched any more.
  private func readFrame(from peer: Int) -> Bool {
    let control = controls[peer]!
    let deadline = Deadline.after(.seconds(2))
    do {
      let header = try control.readExactly(4, deadline: deadline)
      let length = header.reduce(0) { Int($0) << 8 | Int($1) }
      guard length >= 5, length <= Self.maximumFrameBytes else {
        onFailure(lost(peer, "it sent a malformed control frame (\(length) bytes)"))
        return true
      }
      let payload = try control.readExactly(length, deadline: deadline)
      let code = payload[1..<5].reduce(Int32(0)) { $0 << 8 | Int32($1) }
      switch FrameKind(rawValue: payload[0]) {
      case .goodbye:
        departed.withLock { _ = $0.insert(peer) }
        onDeparture(peer)
        return true
      case .abort:
        let text = String(decoding: payload[5...], as: UTF8.self)
        onFailure(.reported(code: KaitianError.Code(rawValue: code) ?? .remoteError, report: text))
        return true
      case nil:
        onFailure(lost(peer, "it sent an unknown control frame"))
        return true
      }
    } catch {
      if departed.withLock({ $0.contains(peer) }) { return true }
      onFailure(lost(peer, "its process exited or the network failed (\(error))"))
      return true
    }
  }

  private func lost(_ peer: Int, _ why: String) -> KaitianError {
    let endpoint = endpoints[peer]
    return KaitianError(
      .remoteError,
      "lost rank \(peer) (pid \(endpoint.processID) on host '\(endpoint.hostIdentity)'): \(why)")
  }
}
