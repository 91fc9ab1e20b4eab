/// Allgather(v): every rank ends with every rank's block, in rank order.
enum AllGather {
  /// `blocks` gives each rank's element count and offset in `output`; for plain allgather they
  /// are all equal. A rank's own block is copied in first unless it is already in place.
  static func run(
    _ context: CallContext, input: UnsafeRawPointer, output: UnsafeMutableRawPointer,
    blocks: Partition
  ) throws(KaitianError) {
    let rank = context.rank
    let elementSize = context.elementSize
    let own = output + blocks.offsets[rank] * elementSize
    if UnsafeRawPointer(own) != input {
      own.copyMemory(from: input, byteCount: blocks.counts[rank] * elementSize)
    }
    try Ring.allGather(context, blocks: blocks, shift: 0, buffer: output)
  }
}
