/// Gather and scatter: the root receives one block from every rank, or sends one to each.
/// Every transfer goes straight between the root and that rank, all at once.
enum GatherScatter {
  static func gather(
    _ context: CallContext, input: UnsafeRawPointer, output: UnsafeMutableRawPointer?,
    count: Int, root: Int
  ) throws(KaitianError) {
    let bytes = count * context.elementSize
    guard context.rank == root, let output else {
      try context.run([.send(UnsafeRawBufferPointer(start: input, count: bytes), to: root)])
      return
    }
    let own = output + root * bytes
    if UnsafeRawPointer(own) != input { own.copyMemory(from: input, byteCount: bytes) }
    try context.run(
      (0..<context.size).filter { $0 != root }.map { peer in
        .receive(
          UnsafeMutableRawBufferPointer(start: output + peer * bytes, count: bytes), from: peer)
      })
  }

  static func scatter(
    _ context: CallContext, input: UnsafeRawPointer?, output: UnsafeMutableRawPointer,
    count: Int, root: Int
  ) throws(KaitianError) {
    let bytes = count * context.elementSize
    guard context.rank == root, let input else {
      try context.run([
        .receive(UnsafeMutableRawBufferPointer(start: output, count: bytes), from: root)
      ])
      return
    }
    let own = input + root * bytes
    if UnsafeRawPointer(output) != own { output.copyMemory(from: own, byteCount: bytes) }
    try context.run(
      (0..<context.size).filter { $0 != root }.map { peer in
        .send(UnsafeRawBufferPointer(start: input + peer * bytes, count: bytes), to: peer)
      })
  }
}
