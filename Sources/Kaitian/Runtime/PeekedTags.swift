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
  /// Per peer, a tag's worth of bytes, of which the first `filled[peer]` have been read.
  private var held: [[UInt8]]
  private var filled: [Int]

  init(size: Int) {
    held = Array(repeating: [UInt8](repeating: 0, count: OpHeader.byteCount), count: size)
    filled = Array(repeating: 0, count: size)
  }

  /// Reads what has arrived of `link`'s next tag without giving it to any call; returns the
  /// tag once all of it is here (nil while it is not). Throws when the bytes are no tag at all.
  func peek(_ link: PeerLink) throws(KaitianError) -> OpHeader? {
    let peer = link.peer
    let have = filled[peer]
    if have < OpHeader.byteCount {
      let outcome = held[peer].withUnsafeMutableBytes { buffer in
        Result { () throws(KaitianError) in
          try link.receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: buffer[have...]))
        }
      }
      filled[peer] = have + (try outcome.get())
      guard filled[peer] == OpHeader.byteCount else { return nil }
    }
    guard let tag = held[peer].withUnsafeBytes({ OpHeader.decode($0) }) else {
      throw OpHeader.notATag(from: peer)
    }
    return tag
  }

  /// Moves the bytes held for `peer` to the front of `buffer`; returns how many there were.
  func take(from peer: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
    let count = filled[peer]
    guard count > 0 else { return 0 }
    precondition(buffer.count >= count, "a peeked tag is larger than a tag")
    held[peer].withUnsafeBytes {
      buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[..<count]))
    }
    filled[peer] = 0
    return count
  }
}
