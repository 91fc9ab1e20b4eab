/// The two ring passes that bandwidth-optimal collectives are made of.
///
/// Ranks form a ring: each sends to `right` (rank + 1) and receives from `left` (rank - 1).
/// The buffer is cut into one chunk per rank. In the reduce-scatter pass, at step `step` a rank
/// sends chunk `rank - step + shift` and folds the chunk it receives into its own copy of that
/// chunk; after size - 1 steps every rank holds one chunk reduced over all ranks, chunk
/// `rank + 1 + shift`. The all-gather pass then circulates finished chunks the same way.
/// Each chunk is reduced by exactly one chain of ranks and then copied, so every rank ends with
/// the same bits.
///
/// The passes run over the whole communicator. Their steps (`reduceScatterStep`,
/// `allGatherStep`) run over any `RingMembers`: the hierarchical allreduce interleaves steps of
/// rings over one host's ranks and over one local index's ranks across hosts, and "rank" and
/// "size" above are then places in `members`.
enum Ring {
  /// Reduce-scatter pass. `input(chunk)` is this rank's contribution; `stash(step, chunk)` is
  /// where the partial sum received at `step` goes (and is sent from at `step + 1`).
  static func reduceScatter(
    _ context: CallContext, chunks: Partition, shift: Int,
    input: (Int) -> UnsafeRawPointer,
    stash: (_ step: Int, _ chunk: Int) -> UnsafeMutableRawPointer
  ) throws(KaitianError) {
    let members = RingMembers(wholeOf: context)
    for step in 0..<(members.count - 1) {
      try context.run(
        reduceScatterStep(
          context, members: members, chunks: chunks, shift: shift, step: step, input: input,
          stash: stash))
    }
  }

  /// The transfers of one step of the reduce-scatter pass, for callers that interleave the
  /// steps of several passes (the pipelined hierarchical allreduce).
  static func reduceScatterStep(
    _ context: CallContext, members: RingMembers, chunks: Partition, shift: Int, step: Int,
    input: (Int) -> UnsafeRawPointer,
    stash: (_ step: Int, _ chunk: Int) -> UnsafeMutableRawPointer
  ) -> [Transfer] {
    let size = members.count
    let rank = members.position
    let elementSize = context.elementSize
    let outgoing = ringIndex(rank - step + shift, size)
    let incoming = ringIndex(rank - step - 1 + shift, size)
    let source: UnsafeRawPointer =
      step == 0 ? input(outgoing) : UnsafeRawPointer(stash(step - 1, outgoing))
    return [
      .send(
        UnsafeRawBufferPointer(start: source, count: chunks.counts[outgoing] * elementSize),
        to: members.right),
      .receiveReducing(
        from: members.left, into: stash(step, incoming), with: input(incoming),
        byteCount: chunks.counts[incoming] * elementSize, incomingFirst: true),
    ]
  }

  /// All-gather pass over `buffer`, where block b lives at `offsets[b]` elements. At the start
  /// this rank holds block `rank + shift`.
  static func allGather(
    _ context: CallContext, blocks: Partition, shift: Int, buffer: UnsafeMutableRawPointer
  ) throws(KaitianError) {
    let members = RingMembers(wholeOf: context)
    for step in 0..<(members.count - 1) {
      try context.run(
        allGatherStep(
          context, members: members, blocks: blocks, shift: shift, step: step, buffer: buffer))
    }
  }

  /// The transfers of one step of the all-gather pass (see `reduceScatterStep`).
  static func allGatherStep(
    _ context: CallContext, members: RingMembers, blocks: Partition, shift: Int, step: Int,
    buffer: UnsafeMutableRawPointer
  ) -> [Transfer] {
    let size = members.count
    let rank = members.position
    let elementSize = context.elementSize
    let outgoing = ringIndex(rank + shift - step, size)
    let incoming = ringIndex(rank + shift - step - 1, size)
    return [
      .send(
        UnsafeRawBufferPointer(
          start: buffer + blocks.offsets[outgoing] * elementSize,
          count: blocks.counts[outgoing] * elementSize), to: members.right),
      .receive(
        UnsafeMutableRawBufferPointer(
          start: buffer + blocks.offsets[incoming] * elementSize,
          count: blocks.counts[incoming] * elementSize), from: members.left),
    ]
  }
}

/// The ranks a ring runs over, in ring order, and this rank's place among them.
struct RingMembers: Equatable {
  /// Communicator ranks in ring order.
  let ranks: [Int]
  /// This rank's index in `ranks`.
  let position: Int

  init(ranks: [Int], position: Int) {
    precondition(ranks.indices.contains(position), "a ring's own place is outside its members")
    self.ranks = ranks
    self.position = position
  }

  /// Every rank of the call's communicator, in rank order.
  init(wholeOf context: CallContext) {
    self.init(ranks: Array(0..<context.size), position: context.rank)
  }

  var count: Int { ranks.count }
  /// The rank this one sends to.
  var right: Int { ranks[ringIndex(position + 1, count)] }
  /// The rank this one receives from.
  var left: Int { ranks[ringIndex(position - 1, count)] }
}
