/// Allreduce: every rank ends with the element-wise reduction of all ranks' buffers.
enum AllReduce {
  enum Algorithm: Sendable, Equatable {
    /// log2(size) exchanges of the whole buffer: fewest steps, for small messages.
    case recursiveDoubling
    /// Reduce-scatter then all-gather around a ring: each rank moves 2(size-1)/size of the
    /// buffer, for large messages.
    case ring
    /// For ranks on several hosts of equal rank counts: a ring reduce-scatter inside each host,
    /// a ring allreduce of each host's piece between the hosts, a ring all-gather inside each
    /// host. Why: a flat ring paces every step by its slowest hop, and with the hosts' ranks in
    /// a row two of its hops cross between hosts whatever the others use; this sends each
    /// host's ranks' pieces across on all of them at once, and fewer bytes in all (2 buffers
    /// across, not 3, for 2 hosts of 2), as NCCL's and Horovod's hierarchical allreduces do.
    /// Pipelined by segments of about `segmentBytes` (`HierarchicalAllReduce`).
    case hierarchical(HostLayout, segmentBytes: Int)

    /// The algorithm as the allreduce's tag carries it (`TagDetail.algorithm`). Why: ranks
    /// that chose differently (KAITIAN_RING_THRESHOLD, KAITIAN_HIERARCHICAL or the segment size
    /// set unlike) would otherwise wait for messages that never come, or, with equal byte
    /// totals on a link, read each other's segments as their own; with it, the first message
    /// on a link fails the call as a mismatch. `choose` bounds segment sizes to 1 GiB
    /// (`CommunicatorOptions.maximumSegmentBytes`), so the code cannot overflow.
    var tagValue: Int64 {
      switch self {
      case .recursiveDoubling: 1
      case .ring: 2
      case .hierarchical(_, let segmentBytes): 3 + 4 * Int64(segmentBytes)
      }
    }

    /// `tagValue` in words, for a mismatch message.
    static func describe(tagValue value: Int64) -> String {
      switch value {
      case 1: "recursive doubling"
      case 2: "ring"
      case let value where value >= 7 && value % 4 == 3:
        "hierarchical in segments of \((value - 3) / 4) bytes"
      default: "unknown (\(value))"
      }
    }
  }

  /// `hosts` and `segmentBytes`: the communicator's `hostLayout` and its options'
  /// `hierarchicalSegmentBytes`, taken between 1 byte and `maximumSegmentBytes` here, where the
  /// algorithm value (and with it the tag) is made.
  static func choose(
    byteCount: Int, count: Int, size: Int, ringThreshold: Int, hosts: HostLayout?,
    segmentBytes: Int
  ) -> Algorithm {
    guard size > 1, byteCount >= ringThreshold, count >= size else { return .recursiveDoubling }
    guard let hosts else { return .ring }
    return .hierarchical(
      hosts,
      segmentBytes: min(max(1, segmentBytes), CommunicatorOptions.maximumSegmentBytes))
  }

  static func run(
    _ context: CallContext, input: UnsafeRawPointer, output: UnsafeMutableRawPointer, count: Int,
    algorithm: Algorithm
  ) throws(KaitianError) {
    switch algorithm {
    case .ring:
      try ring(context, input: input, output: output, count: count)
    case .hierarchical(let hosts, let segmentBytes):
      try HierarchicalAllReduce(
        context, input: input, output: output, count: count, hosts: hosts,
        segmentBytes: segmentBytes
      ).run()
    case .recursiveDoubling:
      if UnsafeRawPointer(output) != input {
        output.copyMemory(from: input, byteCount: count * context.elementSize)
      }
      try recursiveDoubling(context, buffer: output, count: count)
    }
  }

  /// Ring allreduce. The reduce-scatter pass reads this rank's chunks from `input` and leaves
  /// partial sums in `output`, so out-of-place costs no extra copy. After it the rank finishes
  /// its own chunk (divides it for avg) before it circulates, so every rank copies the same
  /// final bits; the all-gather pass fills every other chunk of `output`.
  private static func ring(
    _ context: CallContext, input: UnsafeRawPointer, output: UnsafeMutableRawPointer, count: Int
  ) throws(KaitianError) {
    let size = context.size
    let elementSize = context.elementSize
    let chunks = Partition(count: count, parts: size)
    let outputChunk = { (chunk: Int) in output + chunks.offsets[chunk] * elementSize }
    try Ring.reduceScatter(
      context, chunks: chunks, shift: 0, input: { input + chunks.offsets[$0] * elementSize },
      stash: { _, chunk in outputChunk(chunk) })
    let owned = ringIndex(context.rank + 1, size)
    context.kernel.finish(outputChunk(owned), count: chunks.counts[owned], contributors: size)
    try Ring.allGather(context, blocks: chunks, shift: 1, buffer: output)
  }

  /// Recursive doubling. For a size that is not a power of two, the first 2 * extra ranks pair
  /// up: the even rank of each pair hands its data to the odd one and waits for the result.
  /// The remaining power-of-two group exchanges whole buffers with partners at distance 1, 2,
  /// 4, ... in "new rank" numbering. Both partners combine (lower, higher) in that order, so
  /// they compute identical bits.
  private static func recursiveDoubling(
    _ context: CallContext, buffer: UnsafeMutableRawPointer, count: Int
  ) throws(KaitianError) {
    let size = context.size
    let rank = context.rank
    let bytes = count * context.elementSize
    guard size > 1 else { return }
    var group = 1
    while group * 2 <= size { group *= 2 }
    let extra = size - group
    let whole = UnsafeRawBufferPointer(start: buffer, count: bytes)
    let wholeMutable = UnsafeMutableRawBufferPointer(start: buffer, count: bytes)

    let newRank: Int
    if rank < 2 * extra {
      if rank % 2 == 0 {
        try context.run([.send(whole, to: rank + 1)])
        try context.run([.receive(wholeMutable, from: rank + 1)])
        return
      }
      try context.run([
        .receiveReducing(
          from: rank - 1, into: buffer, with: buffer, byteCount: bytes, incomingFirst: true)
      ])
      newRank = rank / 2
    } else {
      newRank = rank - extra
    }

    let incoming = context.scratch.bytes(bytes)
    var distance = 1
    while distance < group {
      let partnerNew = newRank ^ distance
      let partner = partnerNew < extra ? partnerNew * 2 + 1 : partnerNew + extra
      try context.run([
        .send(whole, to: partner),
        .receive(UnsafeMutableRawBufferPointer(start: incoming, count: bytes), from: partner),
      ])
      let partnerIsLower = partnerNew < newRank
      context.kernel.combine(
        into: buffer, partnerIsLower ? UnsafeRawPointer(incoming) : whole.baseAddress!,
        partnerIsLower ? whole.baseAddress! : UnsafeRawPointer(incoming), count: count)
      distance *= 2
    }
    context.kernel.finish(buffer, count: count, contributors: size)
    if rank < 2 * extra {
      try context.run([.send(whole, to: rank - 1)])
    }
  }
}
