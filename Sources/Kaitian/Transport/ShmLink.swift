import CKaitianShim
import Glibc
import Synchronization

/// A link to a rank on the same host through two shared-memory rings.
///
/// The ring this rank writes lives in its own segment; the ring it reads lives in the peer's.
/// Writers publish every `pieceBytes` so the reader starts reducing before a large message is
/// fully copied: the copy and the reduction of one message overlap on the two cores.
final class ShmLink: PeerLink, @unchecked Sendable {
  let peer: Int
  var lastTagSent: CallKey?
  var lastTagReceived: CallKey?
  var waitSource: LinkWaitSource { .doorbell }

  private let outgoing: ShmRing
  private let incoming: ShmRing
  private let peerDoorbell: Doorbell
  private let ownDoorbell: Doorbell
  private var sendCursor = 0
  private var receiveCursor = 0
  private let isShutDown = Atomic<Bool>(false)
  private let hasPeerDeparted = Atomic<Bool>(false)
  private static let pieceBytes = 256 * 1024

  /// The segments are kept alive by the link: rings and doorbells point into them.
  private let segments: [SharedMemorySegment]

  init(
    peer: Int, outgoing: ShmRing, incoming: ShmRing, ownDoorbell: Doorbell,
    peerDoorbell: Doorbell, segments: [SharedMemorySegment]
  ) {
    self.peer = peer
    self.outgoing = outgoing
    self.incoming = incoming
    self.ownDoorbell = ownDoorbell
    self.peerDoorbell = peerDoorbell
    self.segments = segments
  }

  func sendSome(_ bytes: UnsafeRawBufferPointer) throws(KaitianError) -> Int {
    try checkOpen()
    var sent = 0
    while sent < bytes.count {
      let free = outgoing.capacity - (sendCursor - outgoing.consumed)
      var piece = min(bytes.count - sent, free, Self.pieceBytes)
      // Only a message's last piece may end off the 8-byte grid (see ShmRing).
      if piece < bytes.count - sent { piece &= ~(ShmRing.alignment - 1) }
      guard piece > 0 else {
        if hasPeerDeparted.load(ordering: .acquiring) { throw departed("send to") }
        break
      }
      copyIn(bytes.baseAddress! + sent, count: piece)
      sendCursor += piece
      sent += piece
      outgoing.publishWritten(sendCursor)
      peerDoorbell.ring()
    }
    return sent
  }

  func receiveSome(into buffer: UnsafeMutableRawBufferPointer) throws(KaitianError) -> Int {
    var target = buffer.baseAddress
    return try consumeSome(limit: buffer.count, granularity: 1) { chunk in
      target!.copyMemory(from: chunk.baseAddress!, byteCount: chunk.count)
      target! += chunk.count
    }
  }

  func consumeSome(
    limit: Int, granularity: Int, _ body: (UnsafeRawBufferPointer) -> Void
  ) throws(KaitianError) -> Int {
    try checkOpen()
    var consumed = 0
    while consumed < limit {
      var piece = min(incoming.written - receiveCursor, limit - consumed, Self.pieceBytes)
      piece -= piece % granularity
      guard piece > 0 else {
        // Check the flag before looking at the ring again: data the peer wrote before it
        // left must still be delivered.
        if hasPeerDeparted.load(ordering: .acquiring)
          && incoming.written - receiveCursor < min(limit - consumed, granularity)
        {
          throw departed("receive from")
        }
        break
      }
      let start = receiveCursor % incoming.capacity
      let first = min(piece, incoming.capacity - start)
      body(UnsafeRawBufferPointer(start: incoming.data + start, count: first))
      if first < piece {
        body(UnsafeRawBufferPointer(start: incoming.data, count: piece - first))
      }
      receiveCursor += piece
      consumed += piece
      incoming.publishConsumed(receiveCursor)
      peerDoorbell.ring()
    }
    return consumed
  }

  func finishSentMessage(length: Int) -> Bool {
    sendCursor = ShmRing.aligned(sendCursor)
    return true
  }

  func finishReceivedMessage(length: Int) {
    receiveCursor = ShmRing.aligned(receiveCursor)
    incoming.publishConsumed(receiveCursor)
    peerDoorbell.ring()
  }

  func peerDeparted() {
    hasPeerDeparted.store(true, ordering: .releasing)
    ownDoorbell.ring()
  }

  private func departed(_ action: String) -> KaitianError {
    .remote(
      "rank \(peer) destroyed its communicator, so this rank cannot \(action) it; every rank "
        + "must issue the same calls before destroying")
  }

  func shutDown() {
    isShutDown.store(true, ordering: .sequentiallyConsistent)
    ownDoorbell.ring()
  }

  private func checkOpen() throws(KaitianError) {
    if isShutDown.load(ordering: .relaxed) {
      throw .remote("the shared-memory link to rank \(peer) was shut down")
    }
  }

  private func copyIn(_ source: UnsafeRawPointer, count: Int) {
    let start = sendCursor % outgoing.capacity
    let first = min(count, outgoing.capacity - start)
    (outgoing.data + start).copyMemory(from: source, byteCount: first)
    if first < count {
      outgoing.data.copyMemory(from: source + first, byteCount: count - first)
    }
  }
}
