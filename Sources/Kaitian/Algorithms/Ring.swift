/// The two ring passes that bandwidth-optimal collectives are made of.
///
/// Ranks form a ring: each sends to `right` (rank + 1) and receives from `left` (rank - 1).
/// The buffer is cut into one chunk per rank. In the reduce-scatter pass, at step `step` a rank
/// sends chunk `rank - step + shift` and folds the chunk it receives into its own copy of that
/// chunk; after size - 1 steps every rank holds one chunk reduced over all ranks, chunk
/// `rank + 1 + shift`. The all-gather pass then circulates finished chunks the same way.
/// Each chunk is reduced by exactly one chain of ranks and then copied, so every rank ends with
/// the same bits.
enum Ring {
  /// Reduce-scatter pass. `input(chunk)` is this rank's contribution; `stash(step, chunk)` is
  /// where the partial sum received at `step` goes (and is sent from at `step + 1`).
  static func reduceScatter(
    _ context: CallContext, chunks: Partition, shift: Int,
    input: (Int) -> UnsafeRawPointer,
    stash: (_ step: Int, _ chunk: Int) -> UnsafeMutableRawPointer
  ) throws(KaitianError) {
    let size = context.size
    let rank = context.rank
    let elementSize = context.elementSize
    let right = ringIndex(rank + 1, size)
    let left = ringIndex(rank - 1, size)
    for step in 0..<(size - 1) {
      let outgoing = ringIndex(rank - step + shift, size)
      let incoming = ringIndex(rank - step - 1 + shift, size)
      let source: UnsafeRawPointer =
        step == 0 ? input(outgoing) : UnsafeRawPointer(stash(step - 1, outgoing))
      let outgoingBytes = chunks.counts[outgoing] * elementSize
      let incomingBytes = chunks.counts[incoming] * elementSize
      try context.run([
        .send(UnsafeRawBufferPointer(start: source, count: outgoingBytes), to: right),
        .receiveReducing(
          from: left, into: stash(step, incoming), with: input(incoming),
          byteCount: incomingBytes, incomingFirst: true),
      ])
    }
  }

  /// All-gather pass over `buffer`, where block b lives at `offsets[b]` elements. At the start
  /// this rank holds block `rank + shift`.
  static func allGather(
    _ context: CallContext, blocks: Partition, shift: Int, buffer: UnsafeMutableRawPointer
  ) throws(KaitianError) {
    let size = context.size
    let rank = context.rank
    let elementSize = context.elementSize
    let right = ringIndex(rank + 1, size)
    let left = ringIndex(rank - 1, size)
    for step in 0..<(size - 1) {
      let outgoing = ringIndex(rank + shift - step, size)
      let incoming = ringIndex(rank + shift - step - 1, size)
      try context.run([
        .send(
          UnsafeRawBufferPointer(
            start: buffer + blocks.offsets[outgoing] * elementSize,
            count: blocks.counts[outgoing] * elementSize), to: right),
        .receive(
          UnsafeMutableRawBufferPointer(
            start: buffer + blocks.offsets[incoming] * elementSize,
            count: blocks.counts[incoming] * elementSize), from: left),
      ])
    }
  }
}
