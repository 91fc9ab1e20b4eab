/// Reduce: the root ends with the element-wise reduction of all ranks' buffers.
enum Reduce {
  /// `output` matters on the root only. Small messages go up a binomial tree (log2(size)
  /// steps); large ones use the ring reduce-scatter pass and then every rank sends its finished
  /// chunk straight to the root, so no rank moves more than about twice the buffer.
  static func run(
    _ context: CallContext, input: UnsafeRawPointer, output: UnsafeMutableRawPointer?,
    count: Int, root: Int, ringThreshold: Int
  ) throws(KaitianError) {
    let bytes = count * context.elementSize
    let isRoot = context.rank == root
    let accumulator = isRoot ? output! : context.scratch.bytes(bytes)
    if bytes >= ringThreshold && count >= context.size && context.size > 1 {
      try ring(context, input: input, accumulator: accumulator, count: count, root: root)
    } else {
      if UnsafeRawPointer(accumulator) != input {
        accumulator.copyMemory(from: input, byteCount: bytes)
      }
      try binomialTree(context, accumulator: accumulator, count: count, root: root)
    }
  }

  /// Ranks are renumbered relative to the root; at distance 1, 2, 4, ... a rank whose relative
  /// number has that bit set sends its partial result to the rank that bit lower, and stops.
  private static func binomialTree(
    _ context: CallContext, accumulator: UnsafeMutableRawPointer, count: Int, root: Int
  ) throws(KaitianError) {
    let size = context.size
    let relative = ringIndex(context.rank - root, size)
    let bytes = count * context.elementSize
    var distance = 1
    while distance < size {
      if relative & distance != 0 {
        let parent = ringIndex(relative - distance + root, size)
        try context.run([
          .send(UnsafeRawBufferPointer(start: accumulator, count: bytes), to: parent)
        ])
        return
      }
      if relative + distance < size {
        let child = ringIndex(relative + distance + root, size)
        try context.run([
          .receiveReducing(
            from: child, into: accumulator, with: accumulator, byteCount: bytes,
            incomingFirst: false)
        ])
      }
      distance *= 2
    }
    context.kernel.finish(accumulator, count: count, contributors: size)
  }

  private static func ring(
    _ context: CallContext, input: UnsafeRawPointer, accumulator: UnsafeMutableRawPointer,
    count: Int, root: Int
  ) throws(KaitianError) {
    let size = context.size
    let elementSize = context.elementSize
    let chunks = Partition(count: count, parts: size)
    let chunkBytes = { (chunk: Int) in chunks.counts[chunk] * elementSize }
    let inChunk = { (chunk: Int) in input + chunks.offsets[chunk] * elementSize }
    let accChunk = { (chunk: Int) in accumulator + chunks.offsets[chunk] * elementSize }
    try Ring.reduceScatter(
      context, chunks: chunks, shift: 0, input: inChunk, stash: { _, chunk in accChunk(chunk) })
    let owned = ringIndex(context.rank + 1, size)
    context.kernel.finish(accChunk(owned), count: chunks.counts[owned], contributors: size)
    if context.rank == root {
      let transfers = (0..<size).filter { $0 != root }.map { peer in
        let chunk = ringIndex(peer + 1, size)
        return Transfer.receive(
          UnsafeMutableRawBufferPointer(start: accChunk(chunk), count: chunkBytes(chunk)),
          from: peer)
      }
      try context.run(transfers)
    } else {
      try context.run([
        .send(UnsafeRawBufferPointer(start: accChunk(owned), count: chunkBytes(owned)), to: root)
      ])
    }
  }
}
