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
/// buffer, the passes inside the hosts add to the network's time (measured in
/// docs/BENCHMARKS-ENGINE.md, section 3).
///
/// The schedule is a function of the shape only (ranks per host, hosts, segments), so every
/// rank posts the same sequence of transfers on every link. Each tick runs one step of the
/// exchange between hosts and one step of a pass inside the host, together; a segment enters a
/// pass only once its previous pass completed in an earlier tick.
struct HierarchicalAllReduce {
  private let context: CallContext
  private let host: RingMembers
  private let column: RingMembers
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

  /// Where one pass stands: the segments it has completed, and the next step of the one under
  /// way.
  private struct PassCursor {
    let stepsPerSegment: Int
    private(set) var completed = 0
    private(set) var step = 0

    init(stepsPerSegment: Int) { self.stepsPerSegment = stepsPerSegment }

    mutating func advance() {
      step += 1
      if step == stepsPerSegment { (completed, step) = (completed + 1, 0) }
    }
  }

  /// Needs `count >= context.size` (`AllReduce.choose` ensures it): each segment then holds at
  /// least one element per rank, so no piece is empty. Segments of about `segmentBytes`, at
  /// least 1 (`AllReduce.choose` bounds it).
  init(
    _ context: CallContext, input: UnsafeRawPointer, output: UnsafeMutableRawPointer, count: Int,
    hosts: HostLayout, segmentBytes: Int
  ) {
    precondition(count >= context.size, "a hierarchical allreduce of fewer elements than ranks")
    self.context = context
    let host = hosts.hostRing(of: context.rank)
    let column = hosts.columnRing(of: context.rank)
    self.host = host
    self.column = column
    let elementSize = context.elementSize
    let wanted = (count * elementSize - 1) / segmentBytes + 1
    let split = Partition(count: count, parts: min(wanted, count / context.size))
    let ownedChunk = ringIndex(host.position + 1, host.count)
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
    var reduce = PassCursor(stepsPerSegment: host.count - 1)
    var exchange = PassCursor(stepsPerSegment: 2 * (column.count - 1))
    var gather = PassCursor(stepsPerSegment: host.count - 1)
    while gather.completed < segments.count {
      let exchanges = exchange.completed < reduce.completed
      // Gathering first, as it completes segments; reducing runs ahead while none is ready.
      let gathers = gather.completed < exchange.completed
      let reduces = !gathers && reduce.completed < segments.count
      var transfers: [Transfer] = []
      if exchanges {
        transfers += exchangeTransfers(segments[exchange.completed], step: exchange.step)
      }
      if gathers {
        let segment = segments[gather.completed]
        transfers += Ring.allGatherStep(
          context, members: host, blocks: segment.chunks, shift: 1, step: gather.step,
          buffer: segment.output)
      }
      if reduces { transfers += reduceTransfers(segments[reduce.completed], step: reduce.step) }
      try context.run(transfers)

      if exchanges {
        if exchange.step == column.count - 2 { finish(segments[exchange.completed]) }
        exchange.advance()
      }
      if gathers { gather.advance() }
      if reduces { reduce.advance() }
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
