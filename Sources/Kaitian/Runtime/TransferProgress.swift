/// How far one transfer has come: its tag first (when this is the call's first message on the
/// link; a receive starts with what an earlier any-source receive peeked of it), then its
/// payload. Driven by `CallContext.run`, or with the transfers of other calls by
/// `CallContext.runTogether`; `context` is the call this transfer belongs to (its tag, kernel and
/// element size).
struct TransferProgress {
  let link: PeerLink
  let transfer: Transfer
  let context: CallContext
  private var tagBytes: [UInt8] = []
  private var tagDone = 0
  private var expectedTag: OpHeader?
  private(set) var doneBytes = 0
  private(set) var isDone = false

  init(_ transfer: Transfer, link: PeerLink, context: CallContext) {
    self.link = link
    self.transfer = transfer
    self.context = context
    if transfer.isSend {
      if let tag = context.tagToSend(on: link) {
        tagBytes = [UInt8](repeating: 0, count: OpHeader.byteCount)
        tagBytes.withUnsafeMutableBytes { tag.encode(into: $0) }
      }
    } else if let tag = context.tagToReceive(on: link) {
      expectedTag = tag
      tagBytes = [UInt8](repeating: 0, count: OpHeader.byteCount)
    }
  }

  var isSend: Bool { transfer.isSend }
  var totalBytes: Int { transfer.byteCount }

  /// Moves as many bytes as the link takes or has now; returns whether anything moved.
  mutating func advance() throws(KaitianError) -> Bool {
    var moved = false
    if tagDone < tagBytes.count {
      let (link, isSend) = (self.link, self.isSend)
      if tagDone == 0 && !isSend {
        tagDone = tagBytes.withUnsafeMutableBytes {
          context.takePeekedTag(from: link.peer, into: $0)
        }
        moved = tagDone > 0
      }
      if tagDone < tagBytes.count {
        let done = tagDone
        let outcome = tagBytes.withUnsafeMutableBytes { tag in
          let rest = UnsafeMutableRawBufferPointer(rebasing: tag[done...])
          return Result { () throws(KaitianError) in
            isSend
              ? try link.sendSome(UnsafeRawBufferPointer(rest)) : try link.receiveSome(into: rest)
          }
        }
        let n = try outcome.get()
        tagDone += n
        moved = moved || n > 0
      }
      guard tagDone == tagBytes.count else { return moved }
      if let expectedTag {
        let received = tagBytes.withUnsafeBytes { OpHeader.decode($0) }
        if received != expectedTag {
          throw context.mismatch(expected: expectedTag, received: received, peer: link.peer)
        }
      }
    }
    let remaining = transfer.byteCount - doneBytes
    if remaining > 0 {
      let n: Int
      switch transfer.action {
      case .send(let bytes):
        n = try link.sendSome(UnsafeRawBufferPointer(rebasing: bytes[doneBytes...]))
      case .receive(let bytes):
        n = try link.receiveSome(into: UnsafeMutableRawBufferPointer(rebasing: bytes[doneBytes...]))
      case .receiveReducing(let destination, let local, _, let incomingFirst):
        var offset = doneBytes
        let kernel = context.kernel
        let elementSize = context.elementSize
        n = try link.consumeSome(limit: remaining, granularity: elementSize) { incoming in
          let target = destination + offset
          let mine = UnsafeRawPointer(local + offset)
          let theirs = incoming.baseAddress!
          kernel.combine(
            into: target, incomingFirst ? theirs : mine, incomingFirst ? mine : theirs,
            count: incoming.count / elementSize)
          offset += incoming.count
        }
      }
      doneBytes += n
      moved = moved || n > 0
    }
    if doneBytes == transfer.byteCount {
      let length = tagBytes.count + doneBytes
      if isSend {
        isDone = try link.finishSentMessage(length: length)
      } else {
        link.finishReceivedMessage(length: length)
        isDone = true
      }
      moved = moved || isDone
    }
    return moved
  }
}
