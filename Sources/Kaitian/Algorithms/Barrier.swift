/// Barrier: no rank leaves before every rank has entered.
enum Barrier {
  /// Dissemination: in round k every rank signals rank + 2^k and waits for rank - 2^k. After
  /// ceil(log2(size)) rounds each rank has heard, directly or not, from all. The signals are
  /// the call's tags alone (the distances are distinct, so each round uses a fresh link).
  static func run(_ context: CallContext) throws(KaitianError) {
    let size = context.size
    let rank = context.rank
    let empty = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    var distance = 1
    while distance < size {
      try context.run([
        .send(UnsafeRawBufferPointer(empty), to: ringIndex(rank + distance, size)),
        .receive(empty, from: ringIndex(rank - distance, size)),
      ])
      distance *= 2
    }
  }
}
