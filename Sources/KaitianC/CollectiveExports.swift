import Kaitian
import KaitianHeader

// The collectives of include/kaitian.h. Each checks its raw arguments, calls the Communicator
// method of the same name, and returns the Work as a ktWork_t.

/// The frame of every collective: checks `work` and `comm`, runs `issue`, and hands out the
/// Work it returns. *work is NULL after any failure, so a caller cannot free garbage.
private func submit(
  _ function: String, _ comm: ktComm_t?, _ work: UnsafeMutablePointer<ktWork_t?>?,
  _ issue: (Arguments, Communicator) throws(KaitianError) -> Work
) -> ktResult_t {
  entryPoint(function) { arguments throws(KaitianError) in
    let work = try arguments.required(work, "work")
    work.pointee = nil
    let communicator = try arguments.communicator(comm)
    work.pointee = WorkHandle(try issue(arguments, communicator)).retainedPointer()
  }
}

@_cdecl("ktAllReduce")
public func ktAllReduce(
  _ sendbuff: UnsafeRawPointer?, _ recvbuff: UnsafeMutableRawPointer?, _ count: Int,
  _ datatype: ktDataType_t, _ op: ktRedOp_t, _ comm: ktComm_t?,
  _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktAllReduce", comm, work) { (arguments, comm) throws(KaitianError) in
    let count = try arguments.count(count)
    return try comm.allReduce(
      try arguments.input(sendbuff, count: count),
      into: try arguments.output(recvbuff, count: count), count: count,
      dataType: try arguments.dataType(datatype), op: try arguments.op(op))
  }
}

@_cdecl("ktReduce")
public func ktReduce(
  _ sendbuff: UnsafeRawPointer?, _ recvbuff: UnsafeMutableRawPointer?, _ count: Int,
  _ datatype: ktDataType_t, _ op: ktRedOp_t, _ root: Int32, _ comm: ktComm_t?,
  _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktReduce", comm, work) { (arguments, comm) throws(KaitianError) in
    let count = try arguments.count(count)
    return try comm.reduce(
      try arguments.input(sendbuff, count: count),
      into: arguments.rootOnly(recvbuff, count: count), count: count,
      dataType: try arguments.dataType(datatype), op: try arguments.op(op), root: Int(root))
  }
}

@_cdecl("ktBroadcast")
public func ktBroadcast(
  _ sendbuff: UnsafeRawPointer?, _ recvbuff: UnsafeMutableRawPointer?, _ count: Int,
  _ datatype: ktDataType_t, _ root: Int32, _ comm: ktComm_t?,
  _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktBroadcast", comm, work) { (arguments, comm) throws(KaitianError) in
    let count = try arguments.count(count)
    return try comm.broadcast(
      arguments.rootOnly(UnsafeMutableRawPointer(mutating: sendbuff), count: count),
      into: try arguments.output(recvbuff, count: count), count: count,
      dataType: try arguments.dataType(datatype), root: Int(root))
  }
}

@_cdecl("ktAllGather")
public func ktAllGather(
  _ sendbuff: UnsafeRawPointer?, _ recvbuff: UnsafeMutableRawPointer?, _ sendcount: Int,
  _ datatype: ktDataType_t, _ comm: ktComm_t?, _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktAllGather", comm, work) { (arguments, comm) throws(KaitianError) in
    let count = try arguments.count(sendcount, "sendcount")
    // recvbuff holds nranks * count elements: empty exactly when count is 0.
    return try comm.allGather(
      try arguments.input(sendbuff, count: count),
      into: try arguments.output(recvbuff, count: count), count: count,
      dataType: try arguments.dataType(datatype))
  }
}

@_cdecl("ktAllGatherV")
public func ktAllGatherV(
  _ sendbuff: UnsafeRawPointer?, _ recvbuff: UnsafeMutableRawPointer?,
  _ recvcounts: UnsafePointer<Int>?, _ datatype: ktDataType_t, _ comm: ktComm_t?,
  _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktAllGatherV", comm, work) { (arguments, comm) throws(KaitianError) in
    let (counts, total) = try arguments.counts(recvcounts, ranks: comm.size, "recvcounts")
    return try comm.allGatherV(
      try arguments.input(sendbuff, count: counts[comm.rank]),
      into: try arguments.output(recvbuff, count: total), counts: counts,
      dataType: try arguments.dataType(datatype))
  }
}

@_cdecl("ktReduceScatter")
public func ktReduceScatter(
  _ sendbuff: UnsafeRawPointer?, _ recvbuff: UnsafeMutableRawPointer?, _ recvcount: Int,
  _ datatype: ktDataType_t, _ op: ktRedOp_t, _ comm: ktComm_t?,
  _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktReduceScatter", comm, work) { (arguments, comm) throws(KaitianError) in
    let count = try arguments.count(recvcount, "recvcount")
    return try comm.reduceScatter(
      try arguments.input(sendbuff, count: count),
      into: try arguments.output(recvbuff, count: count), count: count,
      dataType: try arguments.dataType(datatype), op: try arguments.op(op))
  }
}

@_cdecl("ktGather")
public func ktGather(
  _ sendbuff: UnsafeRawPointer?, _ recvbuff: UnsafeMutableRawPointer?, _ sendcount: Int,
  _ datatype: ktDataType_t, _ root: Int32, _ comm: ktComm_t?,
  _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktGather", comm, work) { (arguments, comm) throws(KaitianError) in
    let count = try arguments.count(sendcount, "sendcount")
    return try comm.gather(
      try arguments.input(sendbuff, count: count),
      into: arguments.rootOnly(recvbuff, count: count), count: count,
      dataType: try arguments.dataType(datatype), root: Int(root))
  }
}

@_cdecl("ktScatter")
public func ktScatter(
  _ sendbuff: UnsafeRawPointer?, _ recvbuff: UnsafeMutableRawPointer?, _ recvcount: Int,
  _ datatype: ktDataType_t, _ root: Int32, _ comm: ktComm_t?,
  _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktScatter", comm, work) { (arguments, comm) throws(KaitianError) in
    let count = try arguments.count(recvcount, "recvcount")
    return try comm.scatter(
      arguments.rootOnly(UnsafeMutableRawPointer(mutating: sendbuff), count: count),
      into: try arguments.output(recvbuff, count: count), count: count,
      dataType: try arguments.dataType(datatype), root: Int(root))
  }
}

@_cdecl("ktAllToAll")
public func ktAllToAll(
  _ sendbuff: UnsafeRawPointer?, _ recvbuff: UnsafeMutableRawPointer?, _ count: Int,
  _ datatype: ktDataType_t, _ comm: ktComm_t?, _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktAllToAll", comm, work) { (arguments, comm) throws(KaitianError) in
    let count = try arguments.count(count)
    return try comm.allToAll(
      try arguments.input(sendbuff, count: count),
      into: try arguments.output(recvbuff, count: count), count: count,
      dataType: try arguments.dataType(datatype))
  }
}

@_cdecl("ktAllToAllV")
public func ktAllToAllV(
  _ sendbuff: UnsafeRawPointer?, _ sendcounts: UnsafePointer<Int>?,
  _ recvbuff: UnsafeMutableRawPointer?, _ recvcounts: UnsafePointer<Int>?,
  _ datatype: ktDataType_t, _ comm: ktComm_t?, _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktAllToAllV", comm, work) { (arguments, comm) throws(KaitianError) in
    let sends = try arguments.counts(sendcounts, ranks: comm.size, "sendcounts")
    let receives = try arguments.counts(recvcounts, ranks: comm.size, "recvcounts")
    return try comm.allToAllV(
      try arguments.input(sendbuff, count: sends.total), sendCounts: sends.counts,
      into: try arguments.output(recvbuff, count: receives.total),
      receiveCounts: receives.counts, dataType: try arguments.dataType(datatype))
  }
}

@_cdecl("ktBarrier")
public func ktBarrier(_ comm: ktComm_t?, _ work: UnsafeMutablePointer<ktWork_t?>?) -> ktResult_t {
  submit("ktBarrier", comm, work) { (_, comm) in comm.barrier() }
}

@_cdecl("ktSend")
public func ktSend(
  _ sendbuff: UnsafeRawPointer?, _ count: Int, _ datatype: ktDataType_t, _ peer: Int32,
  _ tag: Int32, _ comm: ktComm_t?, _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktSend", comm, work) { (arguments, comm) throws(KaitianError) in
    let count = try arguments.count(count)
    return try comm.send(
      try arguments.input(sendbuff, count: count), count: count,
      dataType: try arguments.dataType(datatype), to: Int(peer), tag: Int(tag))
  }
}

@_cdecl("ktRecv")
public func ktRecv(
  _ recvbuff: UnsafeMutableRawPointer?, _ count: Int, _ datatype: ktDataType_t, _ peer: Int32,
  _ tag: Int32, _ comm: ktComm_t?, _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktRecv", comm, work) { (arguments, comm) throws(KaitianError) in
    let count = try arguments.count(count)
    return try comm.receive(
      into: try arguments.output(recvbuff, count: count), count: count,
      dataType: try arguments.dataType(datatype), from: Int(peer), tag: Int(tag))
  }
}

@_cdecl("ktRecvAny")
public func ktRecvAny(
  _ recvbuff: UnsafeMutableRawPointer?, _ count: Int, _ datatype: ktDataType_t, _ tag: Int32,
  _ comm: ktComm_t?, _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktRecvAny", comm, work) { (arguments, comm) throws(KaitianError) in
    let count = try arguments.count(count)
    return try comm.receiveFromAny(
      into: try arguments.output(recvbuff, count: count), count: count,
      dataType: try arguments.dataType(datatype), tag: Int(tag))
  }
}

@_cdecl("ktSendRecvBatch")
public func ktSendRecvBatch(
  _ ops: UnsafePointer<ktP2POp_t>?, _ nops: Int32, _ comm: ktComm_t?,
  _ work: UnsafeMutablePointer<ktWork_t?>?
) -> ktResult_t {
  submit("ktSendRecvBatch", comm, work) { (arguments, comm) throws(KaitianError) in
    guard nops >= 0 else { throw arguments.invalid("nops \(nops) is negative") }
    let raw = UnsafeBufferPointer(
      start: nops == 0 ? nil : try arguments.required(ops, "ops"), count: Int(nops))
    var operations: [PointToPointOperation] = []
    for (index, op) in raw.enumerated() {
      let count = try arguments.count(op.count, "ops[\(index)].count")
      let dataType = try arguments.dataType(op.datatype)
      let buffer = try arguments.output(op.buff, count: count, "ops[\(index)].buff")
      switch op.isSend {
      case 1:
        operations.append(
          .send(buffer, count: count, dataType: dataType, to: Int(op.peer), tag: Int(op.tag)))
      case 0:
        operations.append(
          .receive(
            into: buffer, count: count, dataType: dataType, from: Int(op.peer), tag: Int(op.tag)))
      default:
        throw arguments.invalid("ops[\(index)].isSend is \(op.isSend), not 0 or 1")
      }
    }
    return try comm.pointToPointBatch(operations)
  }
}
