import KaitianAuth
import KaitianPOSIX

/// Limits that keep a store server responsive when peers misbehave.
public struct StoreServerLimits: Sendable, Equatable {
  /// Connections served at once; further ones are refused (and logged) until some close.
  public var maxConnections: Int
  /// Connections that have not authenticated yet, at once; further ones are refused. Why a
  /// cap of their own: 1030 idle connections that never authenticated once filled
  /// `maxConnections`, and the job's own clients were refused until the handshake deadline
  /// dropped them. Authenticated clients never count here.
  public var maxUnauthenticated: Int
  /// Connections that have not authenticated yet from one source address, at once: one host
  /// cannot take every unauthenticated slot.
  public var maxUnauthenticatedPerAddress: Int
  /// How long a new connection has to authenticate before it is dropped. Short, because an
  /// unauthenticated peer (a port scan, a slow-loris attack) holds a slot and a thread
  /// meanwhile; a real client answers in milliseconds.
  public var handshakeTimeout: Duration
  /// How long a client may take to accept a response before its connection is dropped.
  public var responseTimeout: Duration
  /// Frame, key and wait sizes; clients should use the same values.
  public var wire: StoreWireLimits
  /// Bytes of keys and values held at once (see `InMemoryStore.maxStoredBytes`). 256 MiB: a
  /// rendezvous of thousands of ranks stores a few MiB.
  public var maxStoredBytes: Int

  public init(
    maxConnections: Int = 1024, maxUnauthenticated: Int = 64,
    maxUnauthenticatedPerAddress: Int = 16, handshakeTimeout: Duration = .seconds(2),
    responseTimeout: Duration = .seconds(30), wire: StoreWireLimits = .default,
    maxStoredBytes: Int = 256 << 20
  ) {
    precondition(maxConnections > 0, "maxConnections must be positive")
    precondition(
      maxUnauthenticated > 0 && maxUnauthenticatedPerAddress > 0,
      "the caps on unauthenticated connections must be positive")
    self.maxConnections = maxConnections
    self.maxUnauthenticated = maxUnauthenticated
    self.maxUnauthenticatedPerAddress = maxUnauthenticatedPerAddress
    self.handshakeTimeout = handshakeTimeout
    self.responseTimeout = responseTimeout
    self.wire = wire
    self.maxStoredBytes = maxStoredBytes
  }

  public static let `default` = StoreServerLimits()
}

/// The TCP server of the rendezvous store, usually embedded in rank 0 or the launcher.
///
/// One thread accepts connections and one thread serves each connection, because a client's
/// `get` or `wait` may block for minutes server-side and must not hold up others. Every
/// connection must pass the job-token handshake (purpose `StoreServer.handshakePurpose`)
/// within `limits.handshakeTimeout`; after that, a request that breaks the protocol closes
/// only that connection, with the reason logged.
///
/// Threading: `start` and `stop` may be called from any thread; `start` at most once.
public final class StoreServer: Sendable {
  /// The handshake purpose of store connections, so engine ports cannot be confused with it.
  public static let handshakePurpose = "kaitian-store"

  private struct State {
    var listener: TCPSocket?
    var acceptThread: OSThread?
    /// Open connections by id, so `stop` can shut them down.
    var connections: [Int: TCPSocket] = [:]
    /// Connections still in the handshake, per source address (see `maxUnauthenticated`).
    var unauthenticated: [String: Int] = [:]
    var unauthenticatedCount: Int { unauthenticated.values.reduce(0, +) }
    var nextConnectionID = 0
    var isStopping = false
  }

  private let host: String
  private let requestedPort: UInt16
  private let token: JobToken
  private let limits: StoreServerLimits
  /// The data; its `shutDown` releases clients blocked in `get` or `wait`.
  private let store: InMemoryStore
  private let state = ConditionLock(State())

  /// - Parameters:
  ///   - host: the address to listen on; `::` (the default) means every IPv4 and IPv6 address.
  ///   - port: the port, or 0 for any free port (returned by `start`).
  public init(
    host: String = "::", port: UInt16 = 0, token: JobToken,
    limits: StoreServerLimits = .default
  ) {
    self.host = host
    self.requestedPort = port
    self.token = token
    self.limits = limits
    self.store = InMemoryStore(maxStoredBytes: limits.maxStoredBytes)
  }

  deinit {
    stop()
  }

  /// Binds the port and starts serving; returns the bound port.
  public func start() throws(StoreError) -> UInt16 {
    let listener: TCPSocket
    do {
      listener = try TCPSocket.listen(host: host, port: requestedPort)
    } catch {
      throw StoreError.connectionFailed(
        Endpoint(host: host, port: requestedPort).description,
        "cannot listen: \(error); pick another port or stop the process using it")
    }
    try state.withLock { state throws(StoreError) in
      precondition(state.listener == nil && !state.isStopping, "StoreServer.start called twice")
      state.listener = listener
      do {
        state.acceptThread = try OSThread.spawn(name: "store accept") { [self] in
          acceptLoop(listener)
        }
      } catch {
        throw StoreError.refused("cannot start the store server's accept thread: \(error)")
      }
    }
    Log.info("store", "store server listening on \(listener.localAddress)")
    return listener.localPort
  }

  /// The address the server listens on, once started.
  public var localAddress: SocketAddress? {
    state.withLock { $0.listener?.localAddress }
  }

  /// Stops accepting, fails blocked `get`/`wait` requests with `.stopped`, closes every
  /// connection, and returns once all server threads have finished. Idempotent.
  public func stop() {
    let (listener, acceptThread) = state.withLock { state in
      state.isStopping = true
      defer { state.acceptThread = nil }
      return (state.listener, state.acceptThread)
    }
    listener?.shutdown()
    acceptThread?.join()
    // Blocked waits answer `.stopped` before their connections are cut, where possible.
    store.shutDown()
    state.withLock { state in
      for connection in state.connections.values { connection.shutdown() }
    }
    _ = state.wait(until: .never) { $0.connections.isEmpty ? true : nil }
    if let listener {
      Log.info("store", "store server on \(listener.localAddress) stopped")
    }
  }

  // MARK: Accepting

  private func acceptLoop(_ listener: TCPSocket) {
    while true {
      let connection: TCPSocket
      do {
        connection = try listener.accept(deadline: .never)
      } catch {
        if state.withLock({ $0.isStopping }) { return }
        // Typically EMFILE (out of descriptors): pause instead of spinning, then carry on.
        Log.error("store", "accept failed: \(error)")
        sleep(for: .milliseconds(100))
        continue
      }
      admit(connection)
    }
  }

  private func admit(_ connection: TCPSocket) {
    let address = connection.peerAddress?.host ?? "unknown"
    let admitted = state.withLock { state -> Result<Int, Refusal> in
      if state.isStopping { return .failure(.stopping) }
      if state.connections.count >= limits.maxConnections {
        return .failure(.full(state.connections.count))
      }
      if state.unauthenticatedCount >= limits.maxUnauthenticated {
        return .failure(.unauthenticated(state.unauthenticatedCount))
      }
      if state.unauthenticated[address, default: 0] >= limits.maxUnauthenticatedPerAddress {
        return .failure(.unauthenticatedFromAddress(address))
      }
      let id = state.nextConnectionID
      state.nextConnectionID += 1
      state.connections[id] = connection
      state.unauthenticated[address, default: 0] += 1
      return .success(id)
    }
    let id: Int
    switch admitted {
    case .success(let admittedID): id = admittedID
    case .failure(let refusal):
      let reason = refusal.reason(limits)
      Log.warn("store", "refused connection from \(connection): \(reason)")
      Handshake.refuse(on: connection, reason: reason, deadline: .after(.milliseconds(100)))
      return
    }
    do {
      try OSThread.detach(name: "store conn \(id)") { [self] in
        serve(connection, handshakeEnded: { self.leaveHandshake(address) })
        state.withLock { _ = $0.connections.removeValue(forKey: id) }
        state.broadcast()
      }
    } catch {
      Log.error("store", "dropping connection from \(connection): \(error)")
      leaveHandshake(address)
      state.withLock { _ = $0.connections.removeValue(forKey: id) }
    }
  }

  /// A connection from `address` has authenticated, or ended without: its slot is free.
  private func leaveHandshake(_ address: String) {
    state.withLock { state in
      let left = state.unauthenticated[address, default: 1] - 1
      state.unauthenticated[address] = left > 0 ? left : nil
    }
  }

  /// Why a connection was not admitted.
  private enum Refusal: Error {
    case stopping
    case full(Int)
    case unauthenticated(Int)
    case unauthenticatedFromAddress(String)

    func reason(_ limits: StoreServerLimits) -> String {
      switch self {
      case .stopping: "the store server is stopping"
      case .full(let open):
        "the store server has \(open) connections open, its limit "
          + "(StoreServerLimits.maxConnections = \(limits.maxConnections)); raise the limit or "
          + "check for clients that leak connections"
      case .unauthenticated(let pending):
        "the store server has \(pending) connections that have not authenticated yet, its limit "
          + "(StoreServerLimits.maxUnauthenticated = \(limits.maxUnauthenticated)); something "
          + "is opening connections without the job token"
      case .unauthenticatedFromAddress(let address):
        "\(address) has \(limits.maxUnauthenticatedPerAddress) connections that have not "
          + "authenticated yet (StoreServerLimits.maxUnauthenticatedPerAddress)"
      }
    }
  }

  // MARK: Serving one connection

  /// Serves one connection; calls `handshakeEnded` once its handshake is over, passed or not.
  private func serve(_ connection: TCPSocket, handshakeEnded: () -> Void) {
    let hello: [UInt8]
    do {
      defer { handshakeEnded() }
      hello = try Handshake.performAsServer(
        on: connection, token: token, purpose: Self.handshakePurpose,
        deadline: .after(limits.handshakeTimeout)
      ).hello
    } catch {
      return  // Already logged with the reason and the peer's address.
    }
    try? connection.setNoDelay()
    let name = String(decoding: hello, as: UTF8.self)
    let client = name.isEmpty ? "\(connection)" : "\(connection) (\(name))"
    Log.debug("store", "store client \(client) connected")
    while true {
      let payload: [UInt8]
      do {
        // No deadline: a client may stay idle for the whole job; `stop` wakes this read.
        payload = try connection.readFrame(maxSize: limits.wire.maxFrameSize, deadline: .never)
      } catch {
        switch error {
        case .socket(let error) where error.code == .peerClosed || isStopping:
          Log.debug("store", "store client \(client) disconnected")
        case .socket(let error):
          Log.warn("store", "dropping store client \(client): \(error)")
        case .oversized(let error):
          Log.warn("store", "dropping store client \(client): \(error)")
        }
        return
      }
      let request: StoreRequest
      do {
        request = try StoreWire.decodeRequest(payload, limits: limits.wire)
      } catch {
        Log.warn("store", "dropping store client \(client): \(error)")
        return
      }
      let response = StoreWire.encode(execute(request))
      do {
        try connection.writeFrame(response, deadline: .after(limits.responseTimeout))
      } catch {
        if !isStopping { Log.warn("store", "dropping store client \(client): \(error)") }
        return
      }
    }
  }

  private var isStopping: Bool { state.withLock { $0.isStopping } }

  private func execute(_ request: StoreRequest) -> StoreResponse {
    do throws(StoreError) {
      switch request {
      case .set(let key, let value):
        try store.set(key: key, value: value)
        return .done
      case .get(let key, let timeout):
        return .value(try store.get(key: key, timeout: timeout))
      case .tryGet(let key):
        return .value(try store.tryGet(key: key))
      case .wait(let keys, let timeout):
        try store.wait(keys: keys, timeout: timeout)
        return .done
      case .add(let key, let delta):
        return .integer(try store.add(key: key, delta: delta))
      case .compareAndSet(let key, let expected, let desired):
        return .value(try store.compareAndSet(key: key, expected: expected, desired: desired))
      case .delete(let key):
        return .flag(try store.delete(key: key))
      case .keys(let prefix):
        let keys = try store.keys(prefix: prefix)
        // Keys arrive one by one within limits, but a listing of many can outgrow a frame.
        let size = 5 + keys.reduce(0) { $0 + 2 + $1.utf8.count }
        guard size <= limits.wire.maxFrameSize else {
          throw StoreError.valueTooLarge(
            "listing keys with prefix '\(prefix)'", size: size, limit: limits.wire.maxFrameSize)
        }
        return .keys(keys)
      }
    } catch {
      return .failure(error)
    }
  }
}
