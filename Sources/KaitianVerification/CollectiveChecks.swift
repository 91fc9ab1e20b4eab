import Kaitian

/// One check per collective: run it on `comm` with reference inputs and compare every element
/// with the independently computed result. Throws on the first wrong element.
public struct CollectiveChecks {
  public let comm: Communicator

  public init(comm: Communicator) { self.comm = comm }

  var rank: Int { comm.rank }
  var size: Int { comm.size }

  func input(_ dataType: DataType, _ op: ReduceOp, count: Int, rank: Int? = nil) -> ElementBuffer {
    ElementBuffer(dataType, count: count) {
      Reference.value(rank: rank ?? self.rank, index: $0, dataType: dataType, op: op)
    }
  }

  func label(_ name: String, _ dataType: DataType, _ op: ReduceOp?, _ count: Int, _ inPlace: Bool)
    -> String
  {
    "\(name) \(dataType) \(op.map { "\($0)" } ?? "") count \(count)\(inPlace ? " in-place" : "")"
      + " on rank \(rank) of \(size)"
  }

  public func allReduce(_ dataType: DataType, _ op: ReduceOp, count: Int, inPlace: Bool) throws {
    let source = input(dataType, op, count: count)
    let target = inPlace ? source : ElementBuffer(dataType, count: count)
    try comm.allReduce(source.raw, into: target.raw, count: count, dataType: dataType, op: op)
      .wait()
    try expectElements(target, label("allreduce", dataType, op, count, inPlace)) {
      Reference.reduced(index: $0, size: size, dataType: dataType, op: op)
    }
  }

  public func reduce(_ dataType: DataType, _ op: ReduceOp, count: Int, root: Int, inPlace: Bool)
    throws
  {
    let source = input(dataType, op, count: count)
    let target = inPlace ? source : ElementBuffer(dataType, count: count)
    try comm.reduce(
      source.raw, into: target.raw, count: count, dataType: dataType, op: op, root: root
    ).wait()
    if rank == root {
      try expectElements(target, label("reduce root \(root)", dataType, op, count, inPlace)) {
        Reference.reduced(index: $0, size: size, dataType: dataType, op: op)
      }
    }
  }

  public func broadcast(_ dataType: DataType, count: Int, root: Int, inPlace: Bool) throws {
    let source = input(dataType, .sum, count: count)
    let target = inPlace ? source : ElementBuffer(dataType, count: count)
    try comm.broadcast(source.raw, into: target.raw, count: count, dataType: dataType, root: root)
      .wait()
    try expectElements(target, label("broadcast root \(root)", dataType, nil, count, inPlace)) {
      Reference.value(rank: root, index: $0, dataType: dataType, op: .sum)
    }
  }

  public func allGather(_ dataType: DataType, count: Int, inPlace: Bool) throws {
    let target = ElementBuffer(dataType, count: count * size)
    let source: UnsafeRawPointer
    let own = input(dataType, .max, count: count)
    if inPlace {
      for index in 0..<count { target[rank * count + index] = own[index] }
      source = UnsafeRawPointer(target.raw + rank * count * dataType.size)
    } else {
      source = UnsafeRawPointer(own.raw)
    }
    try comm.allGather(source, into: target.raw, count: count, dataType: dataType).wait()
    try expectElements(target, label("allgather", dataType, nil, count, inPlace)) {
      Reference.value(rank: $0 / count, index: $0 % count, dataType: dataType, op: .max)
    }
  }

  public func allGatherV(_ dataType: DataType, count: Int) throws {
    let counts = (0..<size).map { count + $0 * 3 % 4 }
    let offsets = counts.indices.map { counts[..<$0].reduce(0, +) }
    let own = input(dataType, .max, count: counts[rank])
    let target = ElementBuffer(dataType, count: counts.reduce(0, +))
    try comm.allGatherV(own.raw, into: target.raw, counts: counts, dataType: dataType).wait()
    for peer in 0..<size {
      for index in 0..<counts[peer] {
        let expected = Reference.value(rank: peer, index: index, dataType: dataType, op: .max)
        if target[offsets[peer] + index] != expected {
          throw Mismatch(
            description: label("allgatherv", dataType, nil, count, false)
              + ": block \(peer) element \(index) is \(target[offsets[peer] + index]), "
              + "expected \(expected)")
        }
      }
    }
  }

  public func reduceScatter(_ dataType: DataType, _ op: ReduceOp, count: Int) throws {
    let source = input(dataType, op, count: count * size)
    let target = ElementBuffer(dataType, count: count)
    try comm.reduceScatter(source.raw, into: target.raw, count: count, dataType: dataType, op: op)
      .wait()
    try expectElements(target, label("reduce_scatter", dataType, op, count, false)) {
      Reference.reduced(index: rank * count + $0, size: size, dataType: dataType, op: op)
    }
  }

  public func gather(_ dataType: DataType, count: Int, root: Int) throws {
    let own = input(dataType, .min, count: count)
    let target = rank == root ? ElementBuffer(dataType, count: count * size) : nil
    try comm.gather(own.raw, into: target?.raw, count: count, dataType: dataType, root: root)
      .wait()
    if let target {
      try expectElements(target, label("gather root \(root)", dataType, nil, count, false)) {
        Reference.value(rank: $0 / count, index: $0 % count, dataType: dataType, op: .min)
      }
    }
  }

  public func scatter(_ dataType: DataType, count: Int, root: Int) throws {
    let source = rank == root ? input(dataType, .min, count: count * size) : nil
    let target = ElementBuffer(dataType, count: count)
    try comm.scatter(source?.raw, into: target.raw, count: count, dataType: dataType, root: root)
      .wait()
    try expectElements(target, label("scatter root \(root)", dataType, nil, count, false)) {
      Reference.value(rank: root, index: rank * count + $0, dataType: dataType, op: .min)
    }
  }

  public func allToAll(_ dataType: DataType, count: Int) throws {
    let source = input(dataType, .max, count: count * size)
    let target = ElementBuffer(dataType, count: count * size)
    try comm.allToAll(source.raw, into: target.raw, count: count, dataType: dataType).wait()
    try expectElements(target, label("alltoall", dataType, nil, count, false)) {
      Reference.value(
        rank: $0 / count, index: rank * count + $0 % count, dataType: dataType, op: .max)
    }
  }

  public func allToAllV(_ dataType: DataType, count: Int) throws {
    let sent = { (from: Int, to: Int) in count + (from + 2 * to) % 3 }
    let sendCounts = (0..<size).map { sent(rank, $0) }
    let receiveCounts = (0..<size).map { sent($0, rank) }
    let source = input(dataType, .max, count: sendCounts.reduce(0, +))
    let target = ElementBuffer(dataType, count: receiveCounts.reduce(0, +))
    try comm.allToAllV(
      source.raw, sendCounts: sendCounts, into: target.raw, receiveCounts: receiveCounts,
      dataType: dataType
    ).wait()
    var position = 0
    for peer in 0..<size {
      let start = (0..<rank).map { sent(peer, $0) }.reduce(0, +)
      for index in 0..<receiveCounts[peer] {
        let expected = Reference.value(
          rank: peer, index: start + index, dataType: dataType, op: .max)
        if target[position] != expected {
          throw Mismatch(
            description: label("alltoallv", dataType, nil, count, false)
              + ": block from \(peer) element \(index) is \(target[position]), expected \(expected)"
          )
        }
        position += 1
      }
    }
  }

  /// Each rank sends to the next and receives from the previous; even ranks send first so the
  /// ring cannot deadlock when messages exceed the transport's buffering.
  public func sendReceive(_ dataType: DataType, count: Int) throws {
    guard size > 1 else { return }
    let next = (rank + 1) % size
    let previous = (rank + size - 1) % size
    let own = input(dataType, .sum, count: count)
    let target = ElementBuffer(dataType, count: count)
    let send = { try comm.send(own.raw, count: count, dataType: dataType, to: next, tag: 7).wait() }
    let receive = {
      try comm.receive(into: target.raw, count: count, dataType: dataType, from: previous, tag: 7)
        .wait()
    }
    if rank % 2 == 0 {
      try send()
      try receive()
    } else {
      try receive()
      try send()
    }
    try expectElements(target, label("send/recv", dataType, nil, count, false)) {
      Reference.value(rank: previous, index: $0, dataType: dataType, op: .sum)
    }
  }

  /// Every other rank sends rank 0 one message (tag 9), which rank 0 takes with receives from
  /// any rank; each must name a different sender and hold that sender's data. With 3 or more
  /// ranks, rank 1 first sends a tag-8 message: rank 0's next receive from any rank with tag 9
  /// must pass it over (its tag stays peeked) and match rank 2, and the receive from rank 1 with
  /// tag 8 that follows must still get it.
  public func receiveFromAnyRank(_ dataType: DataType, count: Int) throws {
    guard size > 1 else { return }
    let what = label("recv from any rank", dataType, nil, count, false)
    // Every receive runs before anything is thrown, so the ranks stay in step (MismatchLog).
    var log = MismatchLog()
    if rank == 0 {
      var senders: Set<Int> = []
      for _ in 1..<size {
        let target = ElementBuffer(dataType, count: count)
        let work = try comm.receiveFromAny(
          into: target.raw, count: count, dataType: dataType, tag: 9)
        try work.wait()
        try log.check {
          guard let source = work.source, source > 0, source < size,
            senders.insert(source).inserted
          else {
            throw Mismatch(
              description: "\(what): source \(String(describing: work.source)) after \(senders)")
          }
          try expectElements(target, what + " (from rank \(source))") {
            Reference.value(rank: source, index: $0, dataType: dataType, op: .sum)
          }
        }
      }
    } else {
      let own = input(dataType, .sum, count: count)
      try comm.send(own.raw, count: count, dataType: dataType, to: 0, tag: 9).wait()
    }
    guard size > 2 else { return try log.finish() }
    // Else rank 2's next send could arrive before rank 3's first and be matched in its place.
    try comm.barrier().wait()
    let skipped = ElementBuffer(dataType, count: count)
    let matched = ElementBuffer(dataType, count: count)
    switch rank {
    case 0:
      let work = try comm.receiveFromAny(
        into: matched.raw, count: count, dataType: dataType, tag: 9)
      try work.wait()
      try comm.receive(into: skipped.raw, count: count, dataType: dataType, from: 1, tag: 8)
        .wait()
      try log.check {
        guard work.source == 2 else {
          throw Mismatch(
            description: "\(what): matched rank \(String(describing: work.source)), expected 2 "
              + "(rank 1's next message has tag 8)")
        }
        try expectElements(matched, what + " (tag 9, after passing over tag 8)") {
          Reference.value(rank: 2, index: $0, dataType: dataType, op: .sum)
        }
      }
      try log.check {
        try expectElements(skipped, what + " (the tag-8 message passed over)") {
          Reference.value(rank: 1, index: $0, dataType: dataType, op: .max)
        }
      }
    case 1:
      let own = input(dataType, .max, count: count)
      try comm.send(own.raw, count: count, dataType: dataType, to: 0, tag: 8).wait()
    case 2:
      let own = input(dataType, .sum, count: count)
      try comm.send(own.raw, count: count, dataType: dataType, to: 0, tag: 9).wait()
    default: break
    }
    try log.finish()
  }

  /// One batch per rank: two messages to the next rank and one to the previous, and the
  /// matching receives, every send listed before every receive. Unbatched, that order deadlocks
  /// once messages outgrow the transport's buffering; in a batch everything progresses at once,
  /// and the two messages to one peer arrive in the order listed.
  public func batchedSendReceive(_ dataType: DataType, count: Int) throws {
    guard size > 1 else { return }
    let next = (rank + 1) % size
    let previous = (rank + size - 1) % size
    let first = input(dataType, .sum, count: count)
    let second = input(dataType, .max, count: count)
    let fromPrevious = [
      ElementBuffer(dataType, count: count), ElementBuffer(dataType, count: count),
    ]
    let fromNext = ElementBuffer(dataType, count: count)
    try comm.pointToPointBatch([
      .send(first.raw, count: count, dataType: dataType, to: next, tag: 3),
      .send(second.raw, count: count, dataType: dataType, to: next, tag: 4),
      .send(first.raw, count: count, dataType: dataType, to: previous, tag: 5),
      .receive(into: fromPrevious[0].raw, count: count, dataType: dataType, from: previous, tag: 3),
      .receive(into: fromPrevious[1].raw, count: count, dataType: dataType, from: previous, tag: 4),
      .receive(into: fromNext.raw, count: count, dataType: dataType, from: next, tag: 5),
    ]).wait()
    let label = label("batched send/recv", dataType, nil, count, false)
    try expectElements(fromPrevious[0], label + " (first from the previous rank)") {
      Reference.value(rank: previous, index: $0, dataType: dataType, op: .sum)
    }
    try expectElements(fromPrevious[1], label + " (second from the previous rank)") {
      Reference.value(rank: previous, index: $0, dataType: dataType, op: .max)
    }
    try expectElements(fromNext, label + " (from the next rank)") {
      Reference.value(rank: next, index: $0, dataType: dataType, op: .sum)
    }
  }

  // MARK: Matrices shared by the thread and process tests

  /// allreduce, reduce (both in place and not) and reduce_scatter for every dtype, op and count.
  public func reductionMatrix(counts: [Int], dataTypes: [DataType] = DataType.allCases) throws {
    var log = MismatchLog()
    for dataType in dataTypes {
      for op in ReduceOp.allCases {
        for count in counts {
          for inPlace in [false, true] {
            try log.check { try allReduce(dataType, op, count: count, inPlace: inPlace) }
            try log.check {
              try reduce(dataType, op, count: count, root: count % size, inPlace: inPlace)
            }
          }
          try log.check { try reduceScatter(dataType, op, count: count) }
        }
      }
    }
    try log.finish()
  }

  /// Every collective that moves data without reducing it, for every dtype and count, with
  /// roots that vary with the count.
  public func dataMovementMatrix(counts: [Int], dataTypes: [DataType] = DataType.allCases) throws {
    var log = MismatchLog()
    for dataType in dataTypes {
      for count in counts {
        let root = (count + 1) % size
        for inPlace in [false, true] {
          try log.check { try broadcast(dataType, count: count, root: root, inPlace: inPlace) }
          try log.check { try allGather(dataType, count: count, inPlace: inPlace) }
        }
        try log.check { try allGatherV(dataType, count: count) }
        try log.check { try gather(dataType, count: count, root: root) }
        try log.check { try scatter(dataType, count: count, root: root) }
        try log.check { try allToAll(dataType, count: count) }
        try log.check { try allToAllV(dataType, count: count) }
        try log.check { try sendReceive(dataType, count: count) }
        try log.check { try batchedSendReceive(dataType, count: count) }
        try log.check { try receiveFromAnyRank(dataType, count: count) }
        try comm.barrier().wait()
      }
    }
    try log.finish()
  }

  /// Several MiB, so ring and chain algorithms wrap small shared-memory rings many times.
  /// By default a prime count of 3 MiB of float32, in float32 and bfloat16.
  public func largeMessages(
    count: Int = 786_433, dataTypes: [DataType] = [.float32, .bfloat16]
  ) throws {
    for dataType in dataTypes {
      try allReduce(dataType, .sum, count: count, inPlace: false)
      try allReduce(dataType, .max, count: count, inPlace: true)
      try reduce(dataType, .sum, count: count, root: size - 1, inPlace: false)
      try broadcast(dataType, count: count, root: 1 % size, inPlace: false)
      try allGather(dataType, count: count / size, inPlace: false)
      try reduceScatter(dataType, .sum, count: count / size)
      try batchedSendReceive(dataType, count: count)
    }
  }
}
