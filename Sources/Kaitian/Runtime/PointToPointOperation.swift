/// One send or receive of `Communicator.pointToPointBatch`. The buffer is borrowed until the
/// batch's work completes: read for a send, written for a receive.
public struct PointToPointOperation: @unchecked Sendable {
  public let isSend: Bool
  public let buffer: UnsafeMutableRawPointer
  public let count: Int
  public let dataType: DataType
  public let peer: Int
  public let tag: Int

  public static func send(
    _ buffer: UnsafeRawPointer, count: Int, dataType: DataType, to peer: Int, tag: Int = 0
  ) -> PointToPointOperation {
    PointToPointOperation(
      isSend: true, buffer: UnsafeMutableRawPointer(mutating: buffer), count: count,
      dataType: dataType, peer: peer, tag: tag)
  }

  public static func receive(
    into buffer: UnsafeMutableRawPointer, count: Int, dataType: DataType, from peer: Int,
    tag: Int = 0
  ) -> PointToPointOperation {
    PointToPointOperation(
      isSend: false, buffer: buffer, count: count, dataType: dataType, peer: peer, tag: tag)
  }
}
