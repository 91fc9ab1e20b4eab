/// Identifies one call on one stream, so a link sends a call's tag only with its first message.
struct CallKey: Equatable, Sendable {
  enum Stream: Equatable, Sendable {
    case collective
    case pointToPoint
  }
  var stream: Stream
  var sequence: UInt64
}

/// How the engine thread can sleep until a link may make progress.
enum LinkWaitSource {
  /// A shared-memory doorbell: the peer rings it after writing data or freeing space.
  case doorbell
  /// A socket: poll(2) for readability or writability.
  case socket(fd: Int32)
}

/// A duplex byte stream to one peer, driven without blocking by the engine thread.
///
/// Threading: every method runs on the owning communicator's engine thread only, except
/// `shutDown`, which the watchdog may call from its own thread to wake the engine.
protocol PeerLink: AnyObject {
  /// The peer's rank in the communicator.
  var peer: Int { get }
  var waitSource: LinkWaitSource { get }
  /// Which call last carried its tag on this link, in each direction.
  var lastTagSent: CallKey? { get set }
  var lastTagReceived: CallKey? { get set }

  /// Queues up to `bytes.count` bytes for the peer; returns how many were taken (0 when full).
  func sendSome(_ bytes: UnsafeRawBufferPointer) throws(KaitianError) -> Int
  /// Copies up to `buffer.count` received bytes into `buffer`; returns how many (0 when none).
  func receiveSome(into buffer: UnsafeMutableRawBufferPointer) throws(KaitianError) -> Int
  /// Lends received bytes to `body` in place, up to `limit` and in whole multiples of
  /// `granularity` (the element size), so reductions read them without a copy.
  /// `body` may be called more than once. Returns the number of bytes consumed.
  func consumeSome(
    limit: Int, granularity: Int, _ body: (UnsafeRawBufferPointer) -> Void
  ) throws(KaitianError) -> Int
  /// Marks the end of one sent message: shared memory realigns its ring, a TCP link with frame
  /// MACs sends out the message's last sealed record. Returns false while that is not done
  /// (the socket is full); call again when the link may progress.
  func finishSentMessage(length: Int) throws(KaitianError) -> Bool
  /// Marks the end of one received message (shared memory realigns its ring).
  func finishReceivedMessage(length: Int)
  /// Makes every later call fail and wakes a sleeping engine thread; safe from any thread.
  func shutDown()
  /// The peer left on purpose (destroyed its communicator): what it already sent can still be
  /// received, but waiting for more fails. Safe from any thread.
  func peerDeparted()
}

extension PeerLink {
  func finishSentMessage(length: Int) throws(KaitianError) -> Bool { true }
  func finishReceivedMessage(length: Int) {}
  /// A socket reports the peer's close by itself.
  func peerDeparted() {}
}
