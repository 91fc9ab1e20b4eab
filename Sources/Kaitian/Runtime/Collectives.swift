/// The collectives of a communicator on raw buffers. Each validates its arguments at once
/// (throwing an invalid-argument error that names the rank and the call) and returns a `Work`.
/// Out-of-place when `input` and `output` differ; in place when they are the same memory
/// (for allgather and gather: when `input` is this rank's block of `output`).
extension Communicator {
  public func allReduce(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, op: ReduceOp
  ) throws(KaitianError) -> Work {
    try check(.allReduce, count: count)
    let algorithm = AllReduce.choose(
      byteCount: count * dataType.size, count: count, size: size,
      ringThreshold: options.ringThresholdBytes, hosts: hostLayout,
      segmentBytes: options.hierarchicalSegmentBytes)
    let call = CallDescription(
      kind: .allReduce, dataType: dataType, op: op, count: count,
      detail: .algorithm(algorithm.tagValue))
    return submitCollective(call) { context throws(KaitianError) in
      try AllReduce.run(
        context, input: input, output: output, count: count, algorithm: algorithm)
    }
  }

  /// `output` is written on the root only and may be nil elsewhere.
  public func reduce(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer?, count: Int,
    dataType: DataType, op: ReduceOp, root: Int
  ) throws(KaitianError) -> Work {
    try check(.reduce, count: count, root: root)
    if rank == root && output == nil { throw argument(.reduce, "the root needs an output buffer") }
    let threshold = options.ringThresholdBytes
    let call = CallDescription(kind: .reduce, dataType: dataType, op: op, count: count, root: root)
    return submitCollective(call) { context throws(KaitianError) in
      try Reduce.run(
        context, input: input, output: output, count: count, root: root, ringThreshold: threshold)
    }
  }

  /// The root's `input` reaches every rank's `output` (the root's too); `input` is read on the
  /// root only and may be nil elsewhere.
  public func broadcast(
    _ input: UnsafeRawPointer?, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, root: Int
  ) throws(KaitianError) -> Work {
    try check(.broadcast, count: count, root: root)
    if rank == root && input == nil { throw argument(.broadcast, "the root needs an input buffer") }
    let threshold = options.ringThresholdBytes
    let call = CallDescription(kind: .broadcast, dataType: dataType, count: count, root: root)
    let bytes = count * dataType.size
    return submitCollective(call) { context throws(KaitianError) in
      if context.rank == root, let input, UnsafeRawPointer(output) != input {
        output.copyMemory(from: input, byteCount: bytes)
      }
      try Broadcast.run(
        context, buffer: output, byteCount: bytes, root: root, chainThreshold: threshold,
        segmentBytes: 512 * 1024)
    }
  }

  /// Every rank contributes `count` elements; `output` holds size * count, in rank order.
  public func allGather(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType
  ) throws(KaitianError) -> Work {
    try check(.allGather, count: count)
    let blocks = Partition(counts: Array(repeating: count, count: size))
    let call = CallDescription(kind: .allGather, dataType: dataType, count: count)
    return submitCollective(call) { context throws(KaitianError) in
      try AllGather.run(context, input: input, output: output, blocks: blocks)
    }
  }

  /// Rank r contributes `counts[r]` elements; every rank must pass the same `counts`.
  public func allGatherV(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, counts: [Int],
    dataType: DataType
  ) throws(KaitianError) -> Work {
    try checkCounts(.allGatherV, counts)
    let blocks = Partition(counts: counts)
    let call = CallDescription(
      kind: .allGatherV, dataType: dataType, count: counts.reduce(0, +),
      detail: .countsDigest(digest(counts)))
    return submitCollective(call) { context throws(KaitianError) in
      try AllGather.run(context, input: input, output: output, blocks: blocks)
    }
  }

  /// `input` holds size * count elements; rank r receives block r of the reduction.
  public func reduceScatter(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, op: ReduceOp
  ) throws(KaitianError) -> Work {
    try check(.reduceScatter, count: count)
    let call = CallDescription(kind: .reduceScatter, dataType: dataType, op: op, count: count)
    return submitCollective(call) { context throws(KaitianError) in
      try ReduceScatter.run(context, input: input, output: output, count: count)
    }
  }

  /// The root's `output` (size * count elements) receives every rank's `count` elements.
  public func gather(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer?, count: Int,
    dataType: DataType, root: Int
  ) throws(KaitianError) -> Work {
    try check(.gather, count: count, root: root)
    if rank == root && output == nil { throw argument(.gather, "the root needs an output buffer") }
    let call = CallDescription(kind: .gather, dataType: dataType, count: count, root: root)
    return submitCollective(call) { context throws(KaitianError) in
      try GatherScatter.gather(context, input: input, output: output, count: count, root: root)
    }
  }

  /// The root's `input` (size * count elements) is split: rank r receives block r.
  public func scatter(
    _ input: UnsafeRawPointer?, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType, root: Int
  ) throws(KaitianError) -> Work {
    try check(.scatter, count: count, root: root)
    if rank == root && input == nil { throw argument(.scatter, "the root needs an input buffer") }
    let call = CallDescription(kind: .scatter, dataType: dataType, count: count, root: root)
    return submitCollective(call) { context throws(KaitianError) in
      try GatherScatter.scatter(context, input: input, output: output, count: count, root: root)
    }
  }

  /// Block p (count elements) of `input` goes to rank p; block q of `output` comes from rank q.
  public func allToAll(
    _ input: UnsafeRawPointer, into output: UnsafeMutableRawPointer, count: Int,
    dataType: DataType
  ) throws(KaitianError) -> Work {
    try check(.allToAll, count: count)
    let blocks = Partition(counts: Array(repeating: count, count: size))
    let call = CallDescription(kind: .allToAll, dataType: dataType, count: count)
    return submitCollective(call) { context throws(KaitianError) in
      try AllToAll.run(
        context, input: input, output: output, sendBlocks: blocks, receiveBlocks: blocks)
    }
  }

  /// Like allToAll with `sendCounts[p]` elements for rank p and `receiveCounts[q]` from rank q,
  /// blocks packed in rank order. Rank p's receiveCounts[r] must equal rank r's sendCounts[p].
  public func allToAllV(
    _ input: UnsafeRawPointer, sendCounts: [Int], into output: UnsafeMutableRawPointer,
    receiveCounts: [Int], dataType: DataType
  ) throws(KaitianError) -> Work {
    try checkCounts(.allToAllV, sendCounts)
    try checkCounts(.allToAllV, receiveCounts)
    let sendBlocks = Partition(counts: sendCounts)
    let receiveBlocks = Partition(counts: receiveCounts)
    var call = CallDescription(kind: .allToAllV, dataType: dataType)
    call.linkCounts = LinkCounts(send: sendCounts, receive: receiveCounts)
    return submitCollective(call) { context throws(KaitianError) in
      try AllToAll.run(
        context, input: input, output: output, sendBlocks: sendBlocks,
        receiveBlocks: receiveBlocks)
    }
  }

  public func barrier() -> Work {
    submitCollective(CallDescription(kind: .barrier)) { context throws(KaitianError) in
      try Barrier.run(context)
    }
  }

  /// Sends `count` elements to `peer`, matched by its `receive` (or `receiveFromAny`) with the
  /// same tag, in order.
  public func send(
    _ input: UnsafeRawPointer, count: Int, dataType: DataType, to peer: Int, tag: Int = 0
  ) throws(KaitianError) -> Work {
    try check(.sendRecv, count: count, peer: peer)
    let call = CallDescription(
      kind: .sendRecv, dataType: dataType, count: count, detail: .messageTag(Int64(tag)))
    let bytes = UnsafeRawBufferPointer(start: input, count: count * dataType.size)
    return submitSend(call, to: peer) { context throws(KaitianError) in
      try context.run([.send(bytes, to: peer)])
    }
  }

  public func receive(
    into output: UnsafeMutableRawPointer, count: Int, dataType: DataType, from peer: Int,
    tag: Int = 0
  ) throws(KaitianError) -> Work {
    try check(.sendRecv, count: count, peer: peer)
    let call = CallDescription(
      kind: .sendRecv, dataType: dataType, count: count, detail: .messageTag(Int64(tag)))
    let bytes = UnsafeMutableRawBufferPointer(start: output, count: count * dataType.size)
    return submitReceive(call, from: peer) { context, peer throws(KaitianError) in
      try context.run([.receive(bytes, from: peer)])
    }
  }

  /// Receives `count` elements from whichever rank first sends this rank a message with `tag`
  /// (as gloo's recvAnysource and MPI_ANY_SOURCE); `Work.source` names that rank once the work
  /// completes. Other senders' messages wait for the receives that match them, so a later
  /// `receive(from:)` of each still gets its peer's messages in order.
  public func receiveFromAny(
    into output: UnsafeMutableRawPointer, count: Int, dataType: DataType, tag: Int = 0
  ) throws(KaitianError) -> Work {
    try check(.sendRecv, count: count)
    if size < 2 {
      throw argument(.sendRecv, "a receive from any rank needs another rank (size \(size))")
    }
    let call = CallDescription(
      kind: .sendRecv, dataType: dataType, count: count, detail: .messageTag(Int64(tag)))
    let bytes = UnsafeMutableRawBufferPointer(start: output, count: count * dataType.size)
    return submitReceive(call, from: nil) { context, peer throws(KaitianError) in
      try context.run([.receive(bytes, from: peer)])
    }
  }

  /// Sends and receives that progress together, as NCCL's grouped send/recv: a ring exchange
  /// or any other pattern completes whatever order each rank lists its operations in.
  ///
  /// Each operation matches a send or receive of the peer's (batched or not) as a single
  /// `send`/`receive` would: in issue order per peer and direction, with the same count and tag.
  public func pointToPointBatch(_ operations: [PointToPointOperation]) throws(KaitianError) -> Work
  {
    var parts: [(call: CallDescription, peer: Int, sending: Bool, transfer: Transfer)] = []
    for operation in operations {
      try check(.sendRecv, count: operation.count, peer: operation.peer)
      let call = CallDescription(
        kind: .sendRecv, dataType: operation.dataType, count: operation.count,
        detail: .messageTag(Int64(operation.tag)))
      let bytes = UnsafeMutableRawBufferPointer(
        start: operation.buffer, count: operation.count * operation.dataType.size)
      let transfer: Transfer =
        operation.isSend
        ? .send(UnsafeRawBufferPointer(bytes), to: operation.peer)
        : .receive(bytes, from: operation.peer)
      parts.append((call, operation.peer, operation.isSend, transfer))
    }
    return submitPointToPointBatch(parts)
  }

  // MARK: Argument checks

  private func argument(_ kind: CollectiveKind, _ cause: String) -> KaitianError {
    KaitianError(.invalidArgument, rank: rank, call: kind.description, cause)
  }

  private func check(
    _ kind: CollectiveKind, count: Int, root: Int? = nil, peer: Int? = nil
  ) throws(KaitianError) {
    if count < 0 { throw argument(kind, "count \(count) is negative") }
    if count > Int(Int32.max) * 64 {
      throw argument(kind, "count \(count) is larger than Kaitian supports")
    }
    if let root, root < 0 || root >= size {
      throw argument(kind, "root \(root) is not a rank of this communicator (size \(size))")
    }
    if let peer, peer < 0 || peer >= size || peer == rank {
      throw argument(
        kind, "peer \(peer) is not another rank of this communicator (size \(size), rank \(rank))")
    }
  }

  private func checkCounts(_ kind: CollectiveKind, _ counts: [Int]) throws(KaitianError) {
    if counts.count != size {
      throw argument(kind, "counts has \(counts.count) entries for \(size) ranks")
    }
    if let negative = counts.firstIndex(where: { $0 < 0 }) {
      throw argument(kind, "counts[\(negative)] = \(counts[negative]) is negative")
    }
  }

  /// FNV-1a over the counts, so ranks that disagree on them are caught by the tag compare.
  private func digest(_ counts: [Int]) -> Int64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for value in counts {
      for shift in stride(from: 0, to: 64, by: 8) {
        hash ^= UInt64(truncatingIfNeeded: value >> shift) & 0xff
        hash = hash &* 0x100_0000_01b3
      }
    }
    return Int64(bitPattern: hash)
  }
}
