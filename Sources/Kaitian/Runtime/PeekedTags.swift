/// Tag bytes read from links ahead of the call that will consume them.
///
/// Why: a receive from any rank must find which peer sends it first, and the only way to know
/// is to read the tag that opens each peer's next message. A tag that turns out to open some
/// other call's message (a peer already in the next collective, a send with another tag) is
/// kept here, and that call's receive takes it before reading on from the link. Every link's
/// incoming stream is at a tag whenever a call starts, because each call opens its first
/// message on a link with one and calls run one at a time: what is peeked is always a tag,
/// never payload.
///
/// Threading: the engine thread only.
final class PeekedTags {
  private var held: [[UInt8]]

  init(size: Int) {
    held = Array(repeating: [], count: size)
  }

  /// Reads what has arrived of `link`'s next tag without giving it to any call; returns the
  /// tag once all of it is here (nil while it is not). Throws when the bytes are no tag at all.
  func peek(_ link: PeerLink) throws(KaitianError) -> OpHeader? {
    let peer = link.peer
    var bytes = held[peer]
    if bytes.count < OpHeader.byteCount {
      let have = bytes.count
      bytes.append(contentsOf: repeatElement(0, count: OpHeader.byteCount - have))
      let outcome = bytes.withUnsafeMutableBytes { buffer in
        Result { () throws(KaitianError) in
          try link.receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: buffer[have...]))
        }
      }
      let received = try outcome.get()
      bytes.removeLast(OpHeader.byteCount - have - received)
      held[peer] = bytes
      guard bytes.count == OpHeader.byteCount else { return nil }
    }
    guard let tag = bytes.withUnsafeBytes({ OpHeader.decode($0) }) else {
      throw KaitianError(
        .mismatch,
        "rank \(peer) sent bytes that are not a Kaitian message tag; its stream is out of step "
          + "(a previous call differed in size between the two ranks) or corrupt")
    }
    return tag
  }

  /// Moves the bytes held for `peer` to the front of `buffer`; returns how many there were.
  func take(from peer: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
    let bytes = held[peer]
    guard !bytes.isEmpty else { return 0 }
    precondition(buffer.count >= bytes.count, "a peeked tag is larger than a tag")
    bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
    held[peer] = []
    return bytes.count
  }
}
