/// The hierarchical allreduce (`AllReduce.Algorithm.hierarchical`), pipelined by segments.
///
/// Per segment of the buffer, three passes: a ring reduce-scatter inside the host (this rank
/// ends with its host's sum of one chunk), a ring allreduce of that chunk with the ranks of the
/// same place on the other hosts (which finishes each piece once, on its owner, before it
/// circulates), and a ring all-gather inside the host. Each element is reduced by one chain of
/// ranks and copied from there, so every rank ends with the same bits.
///
/// Why segments: the passes inside a host and the one between hosts use different links
/// (shared memory, the network), so while segment s crosses between the hosts, segment s + 1
/// can be reduced inside them and segment s - 1 gathered. Run one after another over the whole
/// buffer, the passes inside the hosts added to the network's time: with a 5 Gbit/s link
/// between two hosts of 2 ranks that gave 1.06x the flat ring at 64 MiB, pipelined 1.52x (the
/// 3/2 that the bytes crossing allow).
///
/// The schedule is a function of the shape only (ranks per host, hosts, segments), so every
/// rank posts the same sequence of transfers on every link. Each tick runs one step of the
/// pass between hosts and one step of a pass inside the host, together; a pass's segment
/// waits for that segment's previous pass to have completed in an earlier tick.
struct HierarchicalAllReduce {
  let context: CallContext
  let host: RingMembers
  let column: RingMembers
  private let segments: [Segment]

  /// One segment's place in the buffers and its split into chunks and pieces.
  private struct Segment {
    let input: UnsafeRawPointer
    let output: UnsafeMutableRawPointer
    /// One chunk per rank of the host.
    let chunks: Partition
    /// Where this rank's chunk starts, in `output`.
    let owned: UnsafeMutableRawPointer
    /// This rank's chunk, one piece per host.
    let pieces: Partition
  }

  /// `count >= context.size` (see `AllReduce.choose`), so no piece is empty; segments of
  /// about `segmentBytes`, each with at least one element per rank.
  init(
    _ context: CallContext, input: UnsafeRawPointer, output: UnsafeMutableRawPointer, count: Int,
    hosts: HostLayout, segmentBytes: Int
  ) {
    self.context = context
    host = hosts.hostRing(of: context.rank)
    column = hosts.columnRing(of: context.rank)
    let elementSize = context.elementSize
    let wanted = (count * elementSize + segmentBytes - 1) / max(1, segmentBytes)
    let split = Partition(count: count, parts: min(max(1, wanted), count / context.size))
    let ownedChunk = ringIndex(host.position + 1, host.count)
    let host = host
    let column = column
    segments = zip(split.offsets, split.counts).map { offset, elements in
      let chunks = Partition(count: elements, parts: host.count)
      let output = output + offset * elementSize
      return Segment(
        input: input + offset * elementSize, output: output, chunks: chunks,
        owned: output + chunks.offsets[ownedChunk] * elementSize,
        pieces: Partition(count: chunks.counts[ownedChunk], parts: column.count))
    }
  }

  func run() throws(KaitianError) {
    let hostSteps = host.count - 1
    let columnSteps = 2 * (column.count - 1)
    // Segments whose pass is complete, and the next step of the pass under way.
    var reduced = 0
    var reducing = 0
    var exchanged = 0
    var exchanging = 0
    var gathered = 0
    var gathering = 0
    while gathered < segments.count {
      var transfers: [Transfer] = []
      let exchangeStep = exchanged < reduced ? exchanging : nil
      if let step = exchangeStep { transfers += exchangeTransfers(segments[exchanged], step: step) }
      // Gathering first: it finishes segments; reducing runs ahead only while none is ready.
      let gathers = gathered < exchanged
      if gathers {
        transfers += Ring.allGatherStep(
          context, members: host, blocks: segments[gathered].chunks, shift: 1, step: gathering,
          buffer: segments[gathered].output)
      } else if reduced < segments.count {
        transfers += reduceTransfers(segments[reduced], step: reducing)
      }
      try context.run(transfers)

      if let step = exchangeStep {
        if step == column.count - 2 { finish(segments[exchanged]) }
        exchanging += 1
        if exchanging == columnSteps { (exchanged, exchanging) = (exchanged + 1, 0) }
      }
      if gathers {
        gathering += 1
        if gathering == hostSteps { (gathered, gathering) = (gathered + 1, 0) }
      } else if reduced < segments.count {
        reducing += 1
        if reducing == hostSteps { (reduced, reducing) = (reduced + 1, 0) }
      }
    }
  }

  /// A step of the reduce-scatter inside the host: this rank's input, partial sums in `output`.
  private func reduceTransfers(_ segment: Segment, step: Int) -> [Transfer] {
    let elementSize = context.elementSize
    return Ring.reduceScatterStep(
      context, members: host, chunks: segment.chunks, shift: 0, step: step,
      input: { segment.input + segment.chunks.offsets[$0] * elementSize },
      stash: { _, chunk in segment.output + segment.chunks.offsets[chunk] * elementSize })
  }

  /// A step of the allreduce between hosts, in place on this rank's chunk: the ring's
  /// reduce-scatter steps, then its all-gather steps.
  private func exchangeTransfers(_ segment: Segment, step: Int) -> [Transfer] {
    let reduceSteps = column.count - 1
    if step < reduceSteps {
      return Ring.reduceScatterStep(
        context, members: column, chunks: segment.pieces, shift: 0, step: step,
        input: { UnsafeRawPointer(piece(segment, $0)) },
        stash: { _, index in piece(segment, index) })
    }
    return Ring.allGatherStep(
      context, members: column, blocks: segment.pieces, shift: 1, step: step - reduceSteps,
      buffer: segment.owned)
  }

  /// After the reduce-scatter between hosts, this rank's piece is the sum over every rank:
  /// finish it (divide it, for avg) once, here, before it circulates.
  private func finish(_ segment: Segment) {
    let index = ringIndex(column.position + 1, column.count)
    context.kernel.finish(
      piece(segment, index), count: segment.pieces.counts[index], contributors: context.size)
  }

  private func piece(_ segment: Segment, _ index: Int) -> UnsafeMutableRawPointer {
    segment.owned + segment.pieces.offsets[index] * context.elementSize
  }
}
