import KaitianAuth
import KaitianPOSIX
import Synchronization

/// A `KeyValueStore` backed by a `StoreServer` over one authenticated TCP connection.
///
/// Requests are serialized on the connection by a mutex, so one client can be shared by
/// threads; a thread blocked in `get` holds up the others, so give long waiters their own
/// client. Every request has a deadline: its own timeout (for `get`/`wait`) plus
/// `operationTimeout`. Once the connection fails, the client stays failed and every call
/// throws `.connectionLost` naming the server, instead of hanging or silently reconnecting
/// (a reconnect could replay a non-idempotent `add`).
public final class StoreClient: KeyValueStore {
  private enum Connection {
    case open(TCPSocket)
    case broken(StoreError)
  }

  /// The server as the caller named it, for messages.
  public let server: Endpoint
  /// This side's address of the connection: the address of the interface that reaches the
  /// server, which is what peers of a multi-host job can usually reach too.
  public let localAddress: SocketAddress
  private let limits: StoreWireLimits
  private let operationTimeout: Duration
  private let connection: Mutex<Connection>

  /// Connects to the server and authenticates, retrying refused connections until
  /// `connectTimeout` passes (the server may start after this process, or be at one of its
  /// connection caps for a moment).
  ///
  /// - Parameters:
  ///   - token: the job token; `nil` connects without one, which the server refuses with an
  ///     error that says to set `KAITIAN_TOKEN`.
  ///   - clientName: shown in the server's log next to this connection, such as "rank 3".
  ///   - operationTimeout: how long a request may take beyond its own wait time before the
  ///     server is considered unresponsive.
  ///   - limits: must not exceed the server's limits.
  public init(
    host: String, port: UInt16, token: JobToken?, connectTimeout: Duration = .seconds(30),
    operationTimeout: Duration = .seconds(60), clientName: String = "",
    limits: StoreWireLimits = .default
  ) throws(StoreError) {
    let server = Endpoint(host: host, port: port)
    let deadline = Deadline.after(connectTimeout)
    var pause = Duration.milliseconds(20)
    var socket: TCPSocket
    while true {
      do {
        socket = try TCPSocket.connect(host: host, port: port, deadline: deadline)
        try socket.setNoDelay()
      } catch {
        throw StoreError.connectionFailed(server.description, "\(error)")
      }
      do {
        try Handshake.performAsClient(
          on: socket, token: token, purpose: StoreServer.handshakePurpose,
          hello: Array(clientName.utf8.prefix(Handshake.maxHelloSize)), deadline: deadline)
        break
      } catch {
        switch error.code {
        case .tokenMismatch, .missingToken, .serverNotAuthenticated:
          throw StoreError.authenticationFailed("\(error)")
        case .refused:
          // The server is at a connection cap (StoreServerLimits), which frees up as other
          // connections end or time out: try again until the deadline.
          guard deadline.remaining > pause else { throw StoreError.refused("\(error)") }
          sleep(for: pause)
          pause = min(pause * 2, .milliseconds(500))
        default:
          throw StoreError.connectionFailed(server.description, "\(error)")
        }
      }
    }
    self.server = server
    self.localAddress = socket.localAddress
    self.limits = limits
    self.operationTimeout = operationTimeout
    self.connection = Mutex(.open(socket))
  }

  /// Connects to a server given as `host:port` or `[ipv6]:port`.
  public static func connect(
    address: String, token: JobToken?, connectTimeout: Duration = .seconds(30),
    clientName: String = ""
  ) throws(StoreError) -> StoreClient {
    let endpoint: Endpoint
    do {
      endpoint = try Endpoint(parsing: address)
    } catch {
      throw StoreError.invalidArgument("\(error)")
    }
    return try StoreClient(
      host: endpoint.host, port: endpoint.port, token: token, connectTimeout: connectTimeout,
      clientName: clientName)
  }

  // MARK: KeyValueStore

  public func set(key: String, value: [UInt8]) throws(StoreError) {
    try checkKey(key)
    try expectDone(try roundTrip(.set(key: key, value: value)))
  }

  public func get(key: String, timeout: Duration) throws(StoreError) -> [UInt8] {
    try checkKey(key)
    guard let value = try expectValue(try roundTrip(.get(key: key, timeout: timeout))) else {
      throw .protocolViolation("the server answered get('\(key)') without a value")
    }
    return value
  }

  public func tryGet(key: String) throws(StoreError) -> [UInt8]? {
    try checkKey(key)
    return try expectValue(try roundTrip(.tryGet(key: key)))
  }

  public func wait(keys: [String], timeout: Duration) throws(StoreError) {
    guard keys.count <= limits.maxKeysPerWait else {
      throw .invalidArgument(
        "wait for \(keys.count) keys exceeds the limit of \(limits.maxKeysPerWait) "
          + "(StoreWireLimits.maxKeysPerWait); wait in batches")
    }
    for key in keys { try checkKey(key) }
    try expectDone(try roundTrip(.wait(keys: keys, timeout: timeout)))
  }

  public func add(key: String, delta: Int64) throws(StoreError) -> Int64 {
    try checkKey(key)
    let response = try roundTrip(.add(key: key, delta: delta))
    guard case .integer(let value) = response else { throw unexpected(response) }
    return value
  }

  public func compareAndSet(
    key: String, expected: [UInt8]?, desired: [UInt8]
  ) throws(StoreError) -> [UInt8]? {
    try checkKey(key)
    return try expectValue(
      try roundTrip(.compareAndSet(key: key, expected: expected, desired: desired)))
  }

  public func delete(key: String) throws(StoreError) -> Bool {
    try checkKey(key)
    let response = try roundTrip(.delete(key: key))
    guard case .flag(let existed) = response else { throw unexpected(response) }
    return existed
  }

  public func keys(prefix: String) throws(StoreError) -> [String] {
    try checkKey(prefix)
    let response = try roundTrip(.keys(prefix: prefix))
    guard case .keys(let keys) = response else { throw unexpected(response) }
    return keys
  }

  // MARK: Requests

  /// Sends `request` and returns the server's answer, turning a `.failure` into a throw.
  private func roundTrip(_ request: StoreRequest) throws(StoreError) -> StoreResponse {
    let payload = StoreWire.encode(request)
    guard payload.count <= limits.maxFrameSize else {
      throw .valueTooLarge("this request", size: payload.count, limit: limits.maxFrameSize)
    }
    let deadline = Deadline.after(request.blockingTime + operationTimeout)
    let response = try connection.withLock { connection throws(StoreError) -> StoreResponse in
      let socket: TCPSocket
      switch connection {
      case .open(let open): socket = open
      case .broken(let error): throw error
      }
      do {
        try socket.writeFrame(payload, deadline: deadline)
        let answer = try socket.readFrame(maxSize: limits.maxFrameSize, deadline: deadline)
        return try StoreWire.decodeResponse(answer, limits: limits)
      } catch {
        let failure = failure(from: error)
        // The connection's state is unknown now (a late answer may still arrive), so it is
        // never reused; dropping the socket closes it.
        socket.shutdown()
        connection = .broken(failure)
        throw failure
      }
    }
    if case .failure(let error) = response { throw error }
    return response
  }

  private func failure(from error: any Error) -> StoreError {
    switch error {
    case let error as StoreError:
      return .connectionLost(server.description, "\(error)")
    case let error as SocketError where error.code == .timedOut:
      return .connectionLost(
        server.description,
        "no answer within the deadline; the server is overloaded or hung")
    case let error as SocketError:
      return .connectionLost(server.description, "\(error)")
    case FrameError.socket(let error):
      return failure(from: error)
    case FrameError.oversized(let error):
      return .connectionLost(server.description, "\(error)")
    default:
      return .connectionLost(server.description, "\(error)")
    }
  }

  private func checkKey(_ key: String) throws(StoreError) {
    let size = key.utf8.count
    guard size <= limits.maxKeySize else {
      throw .invalidArgument(
        "store key of \(size) bytes is longer than the \(limits.maxKeySize)-byte limit "
          + "(StoreWireLimits.maxKeySize): \(key.prefix(64))...")
    }
  }

  private func expectDone(_ response: StoreResponse) throws(StoreError) {
    guard case .done = response else { throw unexpected(response) }
  }

  private func expectValue(_ response: StoreResponse) throws(StoreError) -> [UInt8]? {
    guard case .value(let value) = response else { throw unexpected(response) }
    return value
  }

  private func unexpected(_ response: StoreResponse) -> StoreError {
    .protocolViolation("the store server at \(server) sent an unexpected response \(response)")
  }
}
