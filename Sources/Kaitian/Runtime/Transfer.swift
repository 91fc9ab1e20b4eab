/// One message of one step of an algorithm: bytes to a peer, or bytes from a peer that are
/// copied or reduced into place.
struct Transfer {
  enum Action {
    case send(UnsafeRawBufferPointer)
    case receive(into: UnsafeMutableRawBufferPointer)
    /// destination = incoming op local (or local op incoming when `incomingFirst` is false),
    /// element by element, as the bytes arrive.
    case receiveReducing(
      destination: UnsafeMutableRawPointer, local: UnsafeRawPointer, byteCount: Int,
      incomingFirst: Bool)
  }

  let peer: Int
  let action: Action

  static func send(_ bytes: UnsafeRawBufferPointer, to peer: Int) -> Transfer {
    Transfer(peer: peer, action: .send(bytes))
  }

  static func receive(_ bytes: UnsafeMutableRawBufferPointer, from peer: Int) -> Transfer {
    Transfer(peer: peer, action: .receive(into: bytes))
  }

  /// Reduces what `peer` sends with `local` into `destination`. The operand order is fixed by
  /// `incomingFirst`, so two ranks combining the same pair compute the same bits.
  static func receiveReducing(
    from peer: Int, into destination: UnsafeMutableRawPointer, with local: UnsafeRawPointer,
    byteCount: Int, incomingFirst: Bool
  ) -> Transfer {
    Transfer(
      peer: peer,
      action: .receiveReducing(
        destination: destination, local: local, byteCount: byteCount, incomingFirst: incomingFirst
      ))
  }

  var isSend: Bool {
    if case .send = action { return true }
    return false
  }

  var byteCount: Int {
    switch action {
    case .send(let bytes): bytes.count
    case .receive(let bytes): bytes.count
    case .receiveReducing(_, _, let byteCount, _): byteCount
    }
  }
}
