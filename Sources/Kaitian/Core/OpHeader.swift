/// The kinds of call a communicator runs; the tag of every message it sends.
public enum CollectiveKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
  case allReduce = 1
  case reduce
  case broadcast
  case allGather
  case allGatherV
  case reduceScatter
  case gather
  case scatter
  case allToAll
  case allToAllV
  case barrier
  case sendRecv

  public var description: String {
    switch self {
    case .allReduce: "allreduce"
    case .reduce: "reduce"
    case .broadcast: "broadcast"
    case .allGather: "allgather"
    case .allGatherV: "allgatherv"
    case .reduceScatter: "reduce_scatter"
    case .gather: "gather"
    case .scatter: "scatter"
    case .allToAll: "alltoall"
    case .allToAllV: "alltoallv"
    case .barrier: "barrier"
    case .sendRecv: "send/recv"
    }
  }
}

/// The 64-byte tag that opens the first message of every call on every link.
///
/// Why: like Gloo's slot tags, it makes mismatch detection free. The receiver compares it with
/// the call it is running itself, so a peer in a different call (other kind, dtype, count, root,
/// or order) is reported with the field that differs instead of hanging or corrupting data.
struct OpHeader: Equatable, Sendable {
  static let byteCount = 64
  private static let magic: UInt32 = 0x4B54_4F50  // "KTOP"
  private static let version: UInt16 = 1

  var kind: CollectiveKind
  /// Per-communicator sequence number of collectives, or per-pair number of send/recv calls.
  var sequence: UInt64
  var dataType: DataType
  var op: ReduceOp
  var count: Int64
  var root: Int32
  var detail: TagDetail
  var sender: Int32

  func encode(into buffer: UnsafeMutableRawBufferPointer) {
    precondition(buffer.count >= Self.byteCount)
    assert(TagDetail(kind: kind, wireValue: detail.wireValue) == detail, "\(detail) on \(kind)")
    buffer.initializeMemory(as: UInt8.self, repeating: 0)
    buffer.storeBytes(of: Self.magic.littleEndian, toByteOffset: 0, as: UInt32.self)
    buffer.storeBytes(of: Self.version.littleEndian, toByteOffset: 4, as: UInt16.self)
    buffer.storeBytes(of: kind.rawValue, toByteOffset: 7, as: UInt8.self)
    buffer.storeBytes(of: sequence.littleEndian, toByteOffset: 8, as: UInt64.self)
    buffer.storeBytes(of: count.littleEndian, toByteOffset: 16, as: Int64.self)
    buffer.storeBytes(of: detail.wireValue.littleEndian, toByteOffset: 24, as: Int64.self)
    buffer.storeBytes(of: root.littleEndian, toByteOffset: 32, as: Int32.self)
    buffer.storeBytes(of: sender.littleEndian, toByteOffset: 36, as: Int32.self)
    buffer.storeBytes(of: UInt8(dataType.rawValue), toByteOffset: 40, as: UInt8.self)
    buffer.storeBytes(of: UInt8(op.rawValue), toByteOffset: 41, as: UInt8.self)
  }

  /// Decodes a received tag; nil when the bytes are not a tag at all (a corrupt or foreign stream).
  static func decode(_ buffer: UnsafeRawBufferPointer) -> OpHeader? {
    guard buffer.count >= byteCount,
      UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: 0, as: UInt32.self)) == magic,
      UInt16(littleEndian: buffer.loadUnaligned(fromByteOffset: 4, as: UInt16.self)) == version,
      let kind = CollectiveKind(rawValue: buffer[7]),
      let dataType = DataType(rawValue: Int32(buffer[40])),
      let op = ReduceOp(rawValue: Int32(buffer[41])),
      let detail = TagDetail(
        kind: kind,
        wireValue: Int64(littleEndian: buffer.loadUnaligned(fromByteOffset: 24, as: Int64.self)))
    else { return nil }
    return OpHeader(
      kind: kind,
      sequence: UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
      dataType: dataType,
      op: op,
      count: Int64(littleEndian: buffer.loadUnaligned(fromByteOffset: 16, as: Int64.self)),
      root: Int32(littleEndian: buffer.loadUnaligned(fromByteOffset: 32, as: Int32.self)),
      detail: detail,
      sender: Int32(littleEndian: buffer.loadUnaligned(fromByteOffset: 36, as: Int32.self)))
  }

  /// The error for bytes from `peer` where a tag belongs that do not decode as one.
  static func notATag(from peer: Int) -> KaitianError {
    KaitianError(
      .mismatch,
      "rank \(peer) sent bytes that are not a Kaitian message tag; its stream is out of step "
        + "(a previous call differed in size between the two ranks) or corrupt")
  }

  /// Names every field in which `received` (what rank `peer` sent) differs from this, the
  /// header this rank expected; nil when they agree.
  func mismatch(with received: OpHeader, peer: Int, localRank: Int) -> String? {
    func describe(_ name: String, _ mine: String, _ theirs: String) -> String {
      "\(name) \(mine) on rank \(localRank) but \(theirs) on rank \(peer)"
    }
    var fields: [String] = []
    if kind != received.kind {
      fields.append(describe("call", kind.description, received.kind.description))
    } else if sequence != received.sequence {
      let unit = kind == .sendRecv ? "send/recv" : "collective"
      fields.append(
        describe("\(unit) number", "#\(sequence)", "#\(received.sequence)")
          + " (a rank skipped or added a call)")
    }
    if dataType != received.dataType {
      fields.append(describe("dtype", dataType.description, received.dataType.description))
    }
    if op != received.op { fields.append(describe("op", op.description, received.op.description)) }
    if count != received.count { fields.append(describe("count", "\(count)", "\(received.count)")) }
    if root != received.root { fields.append(describe("root", "\(root)", "\(received.root)")) }
    if detail != received.detail, let name = detail.name {
      fields.append(describe(name, detail.valueText, received.detail.valueText))
    }
    return fields.isEmpty ? nil : fields.joined(separator: "; ")
  }
}

/// What a call's tag says beyond the fields every call has: one 64-bit slot on the wire, whose
/// meaning the call's kind decides.
enum TagDetail: Equatable, Sendable {
  case none
  /// send/recv: the caller's tag, which a receive matches.
  case messageTag(Int64)
  /// allgatherv: a digest of the counts per rank, which every rank must pass alike.
  case countsDigest(Int64)
  /// alltoallv: the element count this link carries, on which its two ranks must agree.
  case linkCount(Int64)
  /// allreduce: the algorithm every rank must have chosen (`AllReduce.Algorithm.tagValue`).
  case algorithm(Int64)

  /// Reads the slot as `kind` means it; nil when a kind without a detail has a non-zero slot
  /// (bytes that are not a tag this version writes).
  init?(kind: CollectiveKind, wireValue: Int64) {
    switch kind {
    case .sendRecv: self = .messageTag(wireValue)
    case .allGatherV: self = .countsDigest(wireValue)
    case .allToAllV: self = .linkCount(wireValue)
    case .allReduce: self = .algorithm(wireValue)
    default:
      guard wireValue == 0 else { return nil }
      self = .none
    }
  }

  var wireValue: Int64 {
    switch self {
    case .none: 0
    case .messageTag(let value), .countsDigest(let value), .linkCount(let value),
      .algorithm(let value):
      value
    }
  }

  /// What the detail is, in a mismatch message; nil for none.
  var name: String? {
    switch self {
    case .none: nil
    case .messageTag: "tag"
    case .countsDigest: "counts per rank"
    case .linkCount: "element count between the two ranks"
    case .algorithm: "allreduce algorithm"
    }
  }

  /// The value, in a mismatch message.
  var valueText: String {
    switch self {
    case .algorithm(let value): AllReduce.Algorithm.describe(tagValue: value)
    default: "\(wireValue)"
    }
  }
}
