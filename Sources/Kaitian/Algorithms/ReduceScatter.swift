/// Reduce-scatter: rank r ends with block r of the element-wise reduction of all ranks'
/// buffers of size * count elements.
enum ReduceScatter {
  /// The ring reduce-scatter pass, shifted so each rank finishes its own block. Partial sums
  /// alternate between two scratch blocks (a block is sent in the step after it is reduced,
  /// while the next one arrives), and the last step reduces straight into `output`.
  static func run(
    _ context: CallContext, input: UnsafeRawPointer, output: UnsafeMutableRawPointer,
    count: Int
  ) throws(KaitianError) {
    let size = context.size
    let elementSize = context.elementSize
    let bytes = count * elementSize
    guard size > 1 else {
      if UnsafeRawPointer(output) != input { output.copyMemory(from: input, byteCount: bytes) }
      return
    }
    let blocks = Partition(counts: Array(repeating: count, count: size))
    let scratch = context.scratch.bytes(2 * bytes)
    try Ring.reduceScatter(
      context, chunks: blocks, shift: -1,
      input: { input + $0 * bytes },
      stash: { step, _ in step == size - 2 ? output : scratch + (step % 2) * bytes })
    context.kernel.finish(output, count: count, contributors: size)
  }
}
