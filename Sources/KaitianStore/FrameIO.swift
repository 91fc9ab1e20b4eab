import KaitianPOSIX

/// Why reading or writing a store frame failed: the socket, or a peer breaking the size limit.
enum FrameError: Error {
  case socket(SocketError)
  case oversized(StoreError)
}

extension TCPSocket {
  /// Frames are read in pieces of at most this size, so the buffer grows only as fast as the
  /// peer actually sends: a peer that announces a large frame and stalls cannot make us
  /// allocate the whole announced size up front.
  private static let frameChunkSize = 1 << 20

  /// Reads one frame and returns its payload.
  func readFrame(maxSize: Int, deadline: Deadline) throws(FrameError) -> [UInt8] {
    let header: [UInt8]
    do { header = try readExactly(StoreWire.frameHeaderSize, deadline: deadline) } catch {
      throw .socket(error)
    }
    let length: Int
    do { length = try StoreWire.payloadLength(header: header, maxFrameSize: maxSize) } catch {
      throw .oversized(error)
    }
    var payload: [UInt8] = []
    while payload.count < length {
      let piece = min(length - payload.count, Self.frameChunkSize)
      do { payload += try readExactly(piece, deadline: deadline) } catch { throw .socket(error) }
    }
    return payload
  }

  /// Writes `payload` as one frame.
  func writeFrame(_ payload: [UInt8], deadline: Deadline) throws(SocketError) {
    try writeAll(StoreWire.frame(payload), deadline: deadline)
  }
}
