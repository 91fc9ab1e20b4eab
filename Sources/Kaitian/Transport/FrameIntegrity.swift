import KaitianAuth

/// MACs on everything one TCP link carries (KAITIAN_INTEGRITY=1), under the connection's own
/// keys from the handshake.
///
/// The byte stream is cut into records: a 4-byte length, up to `maxRecordBytes` of data, and
/// HMAC-SHA256(the direction's key, record number || length || data). The record number counts
/// the records of that direction, so someone on the network path can neither change a record,
/// nor drop, repeat or reorder records, nor splice in records of another connection (other
/// keys) or send one back to its sender (the other direction's key), without the check
/// failing. A record's data reaches the engine only after its MAC checked, so changed bytes are
/// never reduced, copied out or passed on.
///
/// Why records and not a MAC per engine message: the two ends of a link do not always cut the
/// stream into the same messages (a call's tag may arrive as a message of its own on one side
/// and as the head of a data message on the other), while records are cut by the sender alone
/// and carry their length. The sender seals what one `sendSome` takes, so a record never spans
/// two messages and every message's end flushes its last record.
///
/// Threading: the owning link's engine thread only.
final class FrameIntegrity {
  static let maxRecordBytes = 256 * 1024
  static let lengthBytes = 4
  static let macBytes = HMACSHA256.size

  private var sealing: HMACSHA256Stream
  private var opening: HMACSHA256Stream
  private var sealedRecords: UInt64 = 0
  private var openedRecords: UInt64 = 0
  /// The sealed record going out, and how much of it the socket took.
  private var outgoing: [UInt8] = []
  private var outgoingSent = 0
  /// The record coming in, as far as it arrived.
  private var incoming: [UInt8] = []
  /// Data of the last record that passed its check, not yet handed out.
  private var opened: [UInt8] = []
  private var openedTaken = 0

  init(keys: Handshake.SessionKeys) {
    sealing = HMACSHA256Stream(key: keys.sending)
    opening = HMACSHA256Stream(key: keys.receiving)
    outgoing.reserveCapacity(Self.lengthBytes + Self.maxRecordBytes + Self.macBytes)
    incoming.reserveCapacity(Self.lengthBytes + Self.maxRecordBytes + Self.macBytes)
  }

  // MARK: Sending

  var hasUnsentRecord: Bool { outgoingSent < outgoing.count }

  /// Seals up to `maxRecordBytes` of `data` as the next record; returns how many bytes it took.
  /// Call only when the previous record is out.
  func seal(_ data: UnsafeRawBufferPointer) -> Int {
    precondition(!hasUnsentRecord, "a record is still going out")
    let taken = min(data.count, Self.maxRecordBytes)
    let header = withUnsafeBytes(of: UInt32(taken).bigEndian) { Array($0) }
    let record = UnsafeRawBufferPointer(rebasing: data[..<taken])
    withUnsafeBytes(of: sealedRecords.bigEndian) { sealing.update($0) }
    sealing.update(header)
    sealing.update(record)
    sealedRecords &+= 1
    outgoing.removeAll(keepingCapacity: true)
    outgoing += header
    outgoing += record
    outgoing += sealing.finalize()
    outgoingSent = 0
    return taken
  }

  /// Offers the unsent rest of the record to `send`, which returns how much it took.
  func flush(
    _ send: (UnsafeRawBufferPointer) throws(KaitianError) -> Int
  ) throws(KaitianError) {
    guard hasUnsentRecord else { return }
    let done = outgoingSent
    outgoingSent += try outgoing.withUnsafeBytes { record in
      Result { () throws(KaitianError) in
        try send(UnsafeRawBufferPointer(rebasing: record[done...]))
      }
    }.get()
  }

  // MARK: Receiving

  /// Copies up to `buffer.count` checked bytes out, first opening the next record when none are
  /// left, with `read` (which returns what arrived, 0 when nothing did). Returns the count
  /// copied; 0 until a whole record arrived. Throws when a record fails its check.
  func receive(
    into buffer: UnsafeMutableRawBufferPointer, peer: Int,
    _ read: (UnsafeMutableRawBufferPointer) throws(KaitianError) -> Int
  ) throws(KaitianError) -> Int {
    if openedTaken == opened.count {
      guard try open(peer: peer, read) else { return 0 }
    }
    let count = min(buffer.count, opened.count - openedTaken)
    opened.withUnsafeBytes { data in
      buffer.baseAddress!.copyMemory(from: data.baseAddress! + openedTaken, byteCount: count)
    }
    openedTaken += count
    return count
  }

  /// Reads what has arrived of the next record; once it is whole and its MAC checks, its data
  /// becomes `opened`. Returns whether that happened.
  private func open(
    peer: Int, _ read: (UnsafeMutableRawBufferPointer) throws(KaitianError) -> Int
  ) throws(KaitianError) -> Bool {
    while true {
      let wanted = try recordLength(peer: peer).map { Self.lengthBytes + $0 + Self.macBytes }
      let target = wanted ?? Self.lengthBytes
      if incoming.count == target, wanted != nil { break }
      let filled = incoming.count
      incoming += repeatElement(0, count: target - filled)
      let arrived = try incoming.withUnsafeMutableBytes { record in
        Result { () throws(KaitianError) in
          try read(UnsafeMutableRawBufferPointer(rebasing: record[filled...]))
        }
      }.get()
      incoming.removeLast(target - filled - arrived)
      if arrived == 0 { return false }
    }
    let length = incoming.count - Self.lengthBytes - Self.macBytes
    withUnsafeBytes(of: openedRecords.bigEndian) { opening.update($0) }
    incoming.withUnsafeBytes {
      opening.update(UnsafeRawBufferPointer(rebasing: $0[..<(Self.lengthBytes + length)]))
    }
    openedRecords &+= 1
    let mac = Array(incoming[(Self.lengthBytes + length)...])
    guard constantTimeEqual(opening.finalize(), mac) else {
      throw .remote(
        "data from rank \(peer) failed its integrity check (KAITIAN_INTEGRITY, record "
          + "\(openedRecords - 1)): it was changed on the network path, or did not come from "
          + "rank \(peer)")
    }
    opened.removeAll(keepingCapacity: true)
    opened += incoming[Self.lengthBytes..<(Self.lengthBytes + length)]
    openedTaken = 0
    incoming.removeAll(keepingCapacity: true)
    return true
  }

  /// The data length the incoming record announces, once its length field arrived.
  private func recordLength(peer: Int) throws(KaitianError) -> Int? {
    guard incoming.count >= Self.lengthBytes else { return nil }
    let length = incoming[..<Self.lengthBytes].reduce(0) { $0 << 8 | Int($1) }
    guard length >= 1, length <= Self.maxRecordBytes else {
      throw .remote(
        "data from rank \(peer) failed its integrity check (KAITIAN_INTEGRITY): a record "
          + "announces \(length) bytes (at most \(Self.maxRecordBytes)); the stream was changed "
          + "on the network path, or rank \(peer) does not use frame MACs")
    }
    return length
  }
}
