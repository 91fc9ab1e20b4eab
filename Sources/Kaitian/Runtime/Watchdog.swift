import CKaitianShim
import Glibc
import KaitianPOSIX
import Synchronization

/// Watches the control connections to every peer on its own thread.
///
/// Why: a rank blocked in a collective cannot notice that some other peer died or gave up.
/// The watchdog reads abort notices and end-of-stream on every control connection at once and
/// reports them, so the engine fails within milliseconds instead of at its timeout.
/// A cut link or a frozen host closes no socket, so the watchdog also sends a heartbeat on every
/// control connection each interval and declares a peer lost when nothing arrived from it for
/// the heartbeat timeout: such faults are then found in seconds, not at the call timeout.
/// Control frames: UInt32 big-endian length, then kind (1 abort, 2 goodbye, 3 heartbeat), Int32
/// error code, and UTF-8 text. Anything else is treated as a broken peer.
final class Watchdog: @unchecked Sendable {
  private enum FrameKind: UInt8 {
    case abort = 1
    case goodbye = 2
    case heartbeat = 3
  }

  private static let maximumFrameBytes = 64 * 1024
  private let controls: [TCPSocket?]
  private let endpoints: [PeerEndpoint]
  private let rank: Int
  private let onFailure: @Sendable (KaitianError) -> Void
  private let onDeparture: @Sendable (Int) -> Void
  private let departed: Mutex<Set<Int>> = Mutex([])
  /// Serializes frames from the watchdog thread (heartbeats) and the failing thread (aborts),
  /// so two frames never interleave on one connection.
  private let sending = Mutex(())
  /// Nanoseconds of silence after which a peer is lost; 0 disables heartbeats.
  private let heartbeatTimeoutNanoseconds: Int64
  private let heartbeatIntervalNanoseconds: Int64
  private let wakePipe: (read: Int32, write: Int32)
  private var thread: OSThread?

  /// `onFailure` runs on the watchdog thread with what a peer reported or how it was lost;
  /// `onDeparture` with the rank of a peer that left on purpose. `heartbeatTimeoutSeconds` of
  /// silence lose a peer (0: never); heartbeats go out four times per timeout, at most 1 s apart.
  init(
    rank: Int, controls: [TCPSocket?], endpoints: [PeerEndpoint],
    heartbeatTimeoutSeconds: Double,
    onDeparture: @escaping @Sendable (Int) -> Void,
    onFailure: @escaping @Sendable (KaitianError) -> Void
  ) throws(KaitianError) {
    heartbeatTimeoutNanoseconds = Int64(heartbeatTimeoutSeconds * 1e9)
    heartbeatIntervalNanoseconds = min(1_000_000_000, heartbeatTimeoutNanoseconds / 4)
    self.onDeparture = onDeparture
    self.rank = rank
    self.controls = controls
    self.endpoints = endpoints
    self.onFailure = onFailure
    var fds: [Int32] = [0, 0]
    if let error = retryingInterrupts({ pipe(&fds) }).errno {
      throw .system("cannot create the watchdog's wake-up pipe: \(errnoText(error))")
    }
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
    sending.withLock { _ in
      for control in controls {
        try? control?.writeAll(frame, deadline: .after(.milliseconds(200)))
      }
    }
  }

  private func watch() {
    var watched = controls.indices.filter { controls[$0] != nil }
    let start = kt_monotonic_ns()
    var lastHeard = [Int64](repeating: start, count: controls.count)
    var nextHeartbeat = start
    while !watched.isEmpty {
      if heartbeatTimeoutNanoseconds > 0 {
        let now = kt_monotonic_ns()
        if now >= nextHeartbeat {
          send(.heartbeat, code: 0, text: "")
          nextHeartbeat = now + heartbeatIntervalNanoseconds
        }
        watched = watched.filter { peer in
          guard now - lastHeard[peer] > heartbeatTimeoutNanoseconds else { return true }
          onFailure(silent(peer, since: now - lastHeard[peer]))
          return false
        }
      }
      var descriptors = [pollfd(fd: wakePipe.read, events: Int16(POLLIN), revents: 0)]
      descriptors += watched.map {
        pollfd(fd: controls[$0]!.fileDescriptor, events: Int16(POLLIN), revents: 0)
      }
      // Until the next heartbeat is due, recomputed when a signal interrupts the wait.
      _ = retryingInterrupts {
        let waitMilliseconds =
          heartbeatTimeoutNanoseconds > 0
          ? Int32(max(1, (nextHeartbeat - kt_monotonic_ns()) / 1_000_000 + 1)) : -1
        return poll(&descriptors, nfds_t(descriptors.count), waitMilliseconds)
      }
      if descriptors[0].revents != 0 { return }
      var stillWatched: [Int] = []
      for (index, peer) in watched.enumerated() {
        if descriptors[index + 1].revents == 0 {
          stillWatched.append(peer)
        } else if !readFrame(from: peer) {
          lastHeard[peer] = kt_monotonic_ns()
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
      case .heartbeat:
        return false
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

  private func silent(_ peer: Int, since nanoseconds: Int64) -> KaitianError {
    let seconds = formatSeconds((Double(nanoseconds / 100_000_000) / 10))
    return lost(
      peer,
      "no heartbeat for \(seconds) s: link down, host frozen or process stopped "
        + "(KAITIAN_HEARTBEAT_TIMEOUT sets this limit; 0 disables it)")
  }

  private func lost(_ peer: Int, _ why: String) -> KaitianError {
    let endpoint = endpoints[peer]
    return KaitianError(
      .remoteError,
      "lost rank \(peer) (pid \(endpoint.processID) on host '\(endpoint.hostIdentity)'): \(why)")
  }
}
