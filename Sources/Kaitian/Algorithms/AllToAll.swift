/// All-to-all(v): rank r sends block p of its input to rank p, which stores it as block r of
/// its output. Every pair exchanges at once; the local block is a copy.
enum AllToAll {
  static func run(
    _ context: CallContext, input: UnsafeRawPointer, output: UnsafeMutableRawPointer,
    sendBlocks: Partition, receiveBlocks: Partition
  ) throws(KaitianError) {
    let rank = context.rank
    let elementSize = context.elementSize
    func sendRange(_ peer: Int) -> UnsafeRawBufferPointer {
      UnsafeRawBufferPointer(
        start: input + sendBlocks.offsets[peer] * elementSize,
        count: sendBlocks.counts[peer] * elementSize)
    }
    func receiveRange(_ peer: Int) -> UnsafeMutableRawBufferPointer {
      UnsafeMutableRawBufferPointer(
        start: output + receiveBlocks.offsets[peer] * elementSize,
        count: receiveBlocks.counts[peer] * elementSize)
    }
    let ownSource = sendRange(rank)
    let ownTarget = receiveRange(rank)
    if ownTarget.count > 0 && UnsafeRawPointer(ownTarget.baseAddress!) != ownSource.baseAddress! {
      ownTarget.baseAddress!.copyMemory(from: ownSource.baseAddress!, byteCount: ownTarget.count)
    }
    var transfers: [Transfer] = []
    for peer in 0..<context.size where peer != rank {
      transfers.append(.send(sendRange(peer), to: peer))
      transfers.append(.receive(receiveRange(peer), from: peer))
    }
    try context.run(transfers)
  }
}
