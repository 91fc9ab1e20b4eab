/// Broadcast: every rank ends with the root's buffer.
enum Broadcast {
  /// Small messages fan out down a binomial tree; large ones stream down a chain of ranks in
  /// segments, so every link carries the buffer once and the chain's latency is paid per
  /// segment, not per buffer.
  static func run(
    _ context: CallContext, buffer: UnsafeMutableRawPointer, byteCount: Int, root: Int,
    chainThreshold: Int, segmentBytes: Int
  ) throws(KaitianError) {
    guard context.size > 1 else { return }
    if byteCount >= chainThreshold && context.size > 2 {
      try chain(context, buffer: buffer, byteCount: byteCount, root: root, segment: segmentBytes)
    } else {
      try binomialTree(context, buffer: buffer, byteCount: byteCount, root: root)
    }
  }

  /// A rank receives from the rank whose relative number is its own with the lowest set bit
  /// cleared, then sends to relative + 2^k for every k below that bit, all at once.
  private static func binomialTree(
    _ context: CallContext, buffer: UnsafeMutableRawPointer, byteCount: Int, root: Int
  ) throws(KaitianError) {
    let size = context.size
    let relative = ringIndex(context.rank - root, size)
    var distance = 1
    while distance < size {
      if relative & distance != 0 {
        let parent = ringIndex(relative - distance + root, size)
        try context.run([
          .receive(UnsafeMutableRawBufferPointer(start: buffer, count: byteCount), from: parent)
        ])
        break
      }
      distance *= 2
    }
    var sends: [Transfer] = []
    distance /= 2
    while distance > 0 {
      if relative + distance < size {
        let child = ringIndex(relative + distance + root, size)
        sends.append(.send(UnsafeRawBufferPointer(start: buffer, count: byteCount), to: child))
      }
      distance /= 2
    }
    try context.run(sends)
  }

  /// Chain root -> root+1 -> ... : in round k a rank receives segment k and forwards k - 1.
  private static func chain(
    _ context: CallContext, buffer: UnsafeMutableRawPointer, byteCount: Int, root: Int,
    segment: Int
  ) throws(KaitianError) {
    let size = context.size
    let relative = ringIndex(context.rank - root, size)
    let previous = ringIndex(context.rank - 1, size)
    let next = ringIndex(context.rank + 1, size)
    let segments = (byteCount + segment - 1) / segment
    func range(_ index: Int) -> (UnsafeMutableRawPointer, Int) {
      let start = index * segment
      return (buffer + start, min(segment, byteCount - start))
    }
    let receives = relative > 0
    let forwards = relative < size - 1
    // The root has nothing to receive, so it sends segment k in round k; others lag by one.
    let rounds = receives ? segments + 1 : segments
    for round in 0..<rounds {
      var transfers: [Transfer] = []
      if receives && round < segments {
        let (start, count) = range(round)
        transfers.append(
          .receive(UnsafeMutableRawBufferPointer(start: start, count: count), from: previous))
      }
      let forwarded = receives ? round - 1 : round
      if forwards && forwarded >= 0 {
        let (start, count) = range(forwarded)
        transfers.append(.send(UnsafeRawBufferPointer(start: start, count: count), to: next))
      }
      try context.run(transfers)
    }
  }
}
