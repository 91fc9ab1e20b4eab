import CKaitianShim
import Glibc
import KaitianAuth
import KaitianPOSIX
import KaitianStore
import Synchronization

/// Where a rank can be reached, as published in the store.
struct PeerEndpoint: Sendable {
  var host: String
  var port: UInt16
  var hostIdentity: String
  var processID: Int32

  var encoded: [UInt8] { Array("\(host)\n\(port)\n\(hostIdentity)\n\(processID)".utf8) }

  init(host: String, port: UInt16, hostIdentity: String, processID: Int32) {
    self.host = host
    self.port = port
    self.hostIdentity = hostIdentity
    self.processID = processID
  }

  init?(decoding bytes: [UInt8]) {
    let fields = String(decoding: bytes, as: UTF8.self).split(
      separator: "\n", omittingEmptySubsequences: false)
    guard fields.count == 4, let port = UInt16(fields[1]), let pid = Int32(fields[3]) else {
      return nil
    }
    self.init(
      host: String(fields[0]), port: port, hostIdentity: String(fields[2]), processID: pid)
  }
}

/// The connections of one rank to every other: an authenticated control connection to each
/// peer (for abort notices and liveness), and a data link that is shared memory for peers on
/// the same host and a second TCP connection otherwise.
///
/// Built once at communicator creation through the store; read-only afterwards.
final class Mesh: @unchecked Sendable {
  let rank: Int
  let size: Int
  let links: [PeerLink?]
  let controls: [TCPSocket?]
  let endpoints: [PeerEndpoint]
  /// This rank's doorbell when it has shared-memory peers.
  let doorbell: Doorbell?

  private init(
    rank: Int, size: Int, links: [PeerLink?], controls: [TCPSocket?],
    endpoints: [PeerEndpoint], doorbell: Doorbell?
  ) {
    self.rank = rank
    self.size = size
    self.links = links
    self.controls = controls
    self.endpoints = endpoints
    self.doorbell = doorbell
  }

  /// Publishes this rank's endpoint, learns everyone's, connects to lower ranks and accepts
  /// higher ones, then maps shared memory with same-host peers.
  static func establish(
    store: any RendezvousStore, rank: Int, size: Int, token: JobToken,
    options: CommunicatorOptions, advertisedHost: String
  ) throws(KaitianError) -> Mesh {
    let deadline = Deadline.after(.milliseconds(Int64(options.timeoutSeconds * 1000)))
    let prefix = options.storePrefix
    // Endpoints and segment names read back from the store decide whom this rank talks to and
    // which memory it maps: only values MAC'd with the job token are believed.
    let store = AuthenticatedRendezvous(store, token: token)
    let listener = try listen(advertising: advertisedHost, rank: rank)
    let own = PeerEndpoint(
      host: advertisedHost, port: listener.localPort, hostIdentity: options.hostIdentity,
      processID: getpid())
    let endpoints = try exchangeEndpoints(
      store: store, prefix: prefix, rank: rank, size: size, own: own, options: options)
    if options.transport == .shm,
      let stranger = endpoints.firstIndex(where: { $0.hostIdentity != own.hostIdentity })
    {
      throw .invalidArgument(
        "transport shm needs every rank on one host, but rank \(stranger) is on host "
          + "'\(endpoints[stranger].hostIdentity)' and rank \(rank) on '\(own.hostIdentity)'")
    }
    let sharesMemory: @Sendable (Int) -> Bool = { peer in
      options.transport != .tcp && endpoints[peer].hostIdentity == own.hostIdentity
    }
    let connections = try connectAll(
      listener: listener, endpoints: endpoints, rank: rank, size: size, token: token,
      prefix: prefix, purpose: handshakePurpose(integrity: options.frameIntegrity),
      needsDataConnection: { !sharesMemory($0) }, deadline: deadline)

    var links: [PeerLink?] = Array(repeating: nil, count: size)
    for peer in 0..<size where peer != rank && !sharesMemory(peer) {
      let data = connections.data[peer]!
      links[peer] = try TCPLink(
        peer: peer, socket: data.socket,
        integrity: options.frameIntegrity ? FrameIntegrity(keys: data.keys) : nil)
    }
    let localPeers = (0..<size).filter { $0 != rank && sharesMemory($0) }
    var doorbell: Doorbell?
    if !localPeers.isEmpty {
      let shared = try SharedMemoryLinks.establish(
        store: store, prefix: prefix, rank: rank,
        localRanks: (0..<size).filter(sharesMemory)
          + [rank], ringBytes: options.sharedMemoryRingBytes, deadline: deadline)
      for (peer, link) in shared.links { links[peer] = link }
      doorbell = shared.doorbell
    }
    Log.info(
      "mesh",
      "rank \(rank)/\(size) connected: \(localPeers.count) peers by shared memory, "
        + "\(size - 1 - localPeers.count) by TCP, listening on \(advertisedHost):\(own.port)")
    return Mesh(
      rank: rank, size: size, links: links, controls: connections.control, endpoints: endpoints,
      doorbell: doorbell)
  }

  /// Listens on the advertised address only, so peers reach this rank there and nowhere else
  /// (not on every interface of the host). An address this host does not have (one that a NAT
  /// or a container's port mapping forwards here) cannot be bound: then the wildcard of its
  /// family, with a warning, since the handshake still keeps strangers out.
  private static func listen(advertising host: String, rank: Int) throws(KaitianError) -> TCPSocket
  {
    do {
      return try TCPSocket.listen(host: host, port: 0)
    } catch let error where error.errno == EADDRNOTAVAIL {
      let wildcard = host.contains(":") ? "::" : "0.0.0.0"
      Log.warn(
        "mesh",
        "rank \(rank) advertises \(host), which is not an address of this host; listening on "
          + "\(wildcard) (every interface) instead")
      do {
        return try TCPSocket.listen(host: wildcard, port: 0)
      } catch {
        throw .system("rank \(rank) cannot listen for peers on \(wildcard): \(error)")
      }
    } catch {
      throw .system("rank \(rank) cannot listen for peers on \(host): \(error)")
    }
  }

  private static func exchangeEndpoints(
    store: any RendezvousStore, prefix: String, rank: Int, size: Int, own: PeerEndpoint,
    options: CommunicatorOptions
  ) throws(KaitianError) -> [PeerEndpoint] {
    let timeout = Duration.milliseconds(Int64(options.timeoutSeconds * 1000))
    do {
      try store.set(key: "\(prefix)/endpoint/\(rank)", value: own.encoded)
      var endpoints: [PeerEndpoint] = []
      for peer in 0..<size {
        let bytes = try store.get(key: "\(prefix)/endpoint/\(peer)", timeout: timeout)
        guard let endpoint = PeerEndpoint(decoding: bytes) else {
          throw KaitianError.system("rank \(peer) published a malformed endpoint in the store")
        }
        endpoints.append(endpoint)
      }
      return endpoints
    } catch let error as StoreError {
      throw KaitianError(
        .systemError, rank: rank, call: "communicator set-up",
        "rendezvous through the store failed: \(error); check that all \(size) ranks started "
          + "with the same store address, world size and prefix")
    } catch let error as KaitianError {
      throw error
    } catch {
      throw .system("\(error)")
    }
  }

  private struct Connections {
    var control: [TCPSocket?]
    var data: [AuthenticatedConnection?]
  }

  /// A connection and the keys its handshake gave both ends (for frame MACs).
  private struct AuthenticatedConnection {
    let socket: TCPSocket
    let keys: Handshake.SessionKeys
  }

  private enum ConnectionKind: String {
    case control
    case data
  }

  /// Connects to every lower rank while a thread accepts every higher one. Each connection
  /// opens with the job-token handshake; its hello names the rank and what the connection is
  /// for, so accepted connections can arrive in any order.
  private static func connectAll(
    listener: TCPSocket, endpoints: [PeerEndpoint], rank: Int, size: Int, token: JobToken,
    prefix: String, purpose: String, needsDataConnection: @escaping @Sendable (Int) -> Bool,
    deadline: Deadline
  ) throws(KaitianError) -> Connections {
    let accepted = Mutex<Result<Connections, KaitianError>>(
      .success(Connections(control: [], data: [])))
    let expected = (rank + 1..<size).reduce(0) { $0 + 1 + (needsDataConnection($1) ? 1 : 0) }
    let acceptor: OSThread
    do {
      acceptor = try OSThread.spawn(name: "kaitian accept") {
        let result = acceptPeers(
          listener: listener, expected: expected, rank: rank, size: size, token: token,
          prefix: prefix, purpose: purpose, deadline: deadline)
        accepted.withLock { $0 = result }
      }
    } catch {
      throw .system("cannot start the connection-accepting thread: \(error)")
    }
    var connections = Connections(
      control: Array(repeating: nil, count: size), data: Array(repeating: nil, count: size))
    var connectError: KaitianError?
    for peer in 0..<rank {
      do {
        connections.control[peer] = try dial(
          endpoints[peer], peer: peer, kind: .control, rank: rank, token: token, prefix: prefix,
          purpose: purpose, deadline: deadline
        ).socket
        if needsDataConnection(peer) {
          connections.data[peer] = try dial(
            endpoints[peer], peer: peer, kind: .data, rank: rank, token: token, prefix: prefix,
            purpose: purpose, deadline: deadline)
        }
      } catch {
        connectError = error
        break
      }
    }
    if connectError != nil { listener.shutdown() }
    acceptor.join()
    if let connectError { throw connectError }
    let higher = try accepted.withLock { $0 }.get()
    for peer in rank + 1..<size {
      connections.control[peer] = higher.control[peer]
      connections.data[peer] = higher.data[peer]
    }
    return connections
  }

  /// Distinguishes peer connections from store connections in the handshake, and ranks with
  /// frame MACs from ranks without: a rank with KAITIAN_INTEGRITY set differently is refused at
  /// once (a purpose mismatch), instead of misreading the other's MACs as data.
  private static func handshakePurpose(integrity: Bool) -> String {
    integrity ? "kaitian-peer+integrity" : "kaitian-peer"
  }

  private static func hello(rank: Int, kind: ConnectionKind, prefix: String) -> [UInt8] {
    Array("kaitian-peer 1 \(rank) \(kind.rawValue) \(prefix)".utf8)
  }

  private static func dial(
    _ endpoint: PeerEndpoint, peer: Int, kind: ConnectionKind, rank: Int, token: JobToken,
    prefix: String, purpose: String, deadline: Deadline
  ) throws(KaitianError) -> AuthenticatedConnection {
    do {
      let socket = try TCPSocket.connect(
        host: endpoint.host, port: endpoint.port, deadline: deadline)
      try socket.setNoDelay()
      let keys = try Handshake.performAsClient(
        on: socket, token: token, purpose: purpose,
        hello: hello(rank: rank, kind: kind, prefix: prefix), deadline: deadline)
      return AuthenticatedConnection(socket: socket, keys: keys)
    } catch let error as HandshakeError where error.code == .purposeMismatch {
      throw KaitianError(
        .invalidArgument, rank: rank, call: "communicator set-up",
        "rank \(peer) refused this rank's connection: \(error); KAITIAN_INTEGRITY must be set "
          + "alike on every rank")
    } catch {
      throw KaitianError(
        .systemError, rank: rank, call: "communicator set-up",
        "cannot connect to rank \(peer) at \(endpoint.host):\(endpoint.port) (host "
          + "'\(endpoint.hostIdentity)'): \(error); check KAITIAN_SOCKET_IFNAME or "
          + "KAITIAN_SOCKET_ADDR and firewalls")
    }
  }

  /// How long one accepted connection may take over its handshake. A silent or slow client is
  /// dropped then; it never delays the others, which handshake on their own threads.
  static let handshakeTimeout = Duration.seconds(2)
  /// Handshakes in progress at once; later connections wait in the listen backlog.
  static let maxConcurrentHandshakes = 32

  /// Connections from higher ranks as their handshakes finish.
  private struct Arrivals {
    var connections: Connections
    var received = 0
    var handshaking = 0
    var lastRefusal: String?
  }

  /// Accepts until every higher rank's connections have arrived. Each accepted connection
  /// handshakes on a thread of its own, so connections that never speak (a port scan, a
  /// stalled or hostile client) cost their own `handshakeTimeout` and nothing else: the
  /// ranks' connections are accepted and authenticated meanwhile.
  private static func acceptPeers(
    listener: TCPSocket, expected: Int, rank: Int, size: Int, token: JobToken, prefix: String,
    purpose: String, deadline: Deadline
  ) -> Result<Connections, KaitianError> {
    let arrivals = ConditionLock(
      Arrivals(
        connections: Connections(
          control: Array(repeating: nil, count: size), data: Array(repeating: nil, count: size))))
    func timedOut(_ cause: String) -> Result<Connections, KaitianError> {
      let (received, lastRefusal) = arrivals.withLock { ($0.received, $0.lastRefusal) }
      let refusal = lastRefusal.map { "; the last refused connection: \($0)" } ?? ""
      return .failure(
        KaitianError(
          .timeout, rank: rank, call: "communicator set-up",
          "only \(received) of \(expected) connections from higher ranks arrived (\(cause)); "
            + "a rank did not start or cannot reach this one\(refusal)"))
    }
    while true {
      // Done, or room for another handshake; re-checked at least every 50 ms.
      let slice = min(deadline, .after(.milliseconds(50)))
      let ready = arrivals.wait(until: slice) { state -> Bool? in
        if state.received == expected { return true }
        return state.handshaking < maxConcurrentHandshakes ? false : nil
      }
      if ready == true {
        return .success(arrivals.withLock { $0.connections })
      }
      if deadline.hasPassed { return timedOut("the set-up timeout passed") }
      if ready == nil { continue }
      let socket: TCPSocket
      do {
        socket = try listener.accept(deadline: slice)
      } catch {
        if error.code == .timedOut && !deadline.hasPassed { continue }
        return timedOut("\(error)")
      }
      arrivals.withLock { $0.handshaking += 1 }
      do {
        try OSThread.detach(name: "kaitian auth") {
          let outcome = authenticate(
            socket, rank: rank, size: size, token: token, prefix: prefix, purpose: purpose)
          arrivals.withLock { state in
            state.handshaking -= 1
            switch outcome {
            case .success(let (peer, kind, keys)):
              switch kind {
              case .control where state.connections.control[peer] == nil:
                state.connections.control[peer] = socket
                state.received += 1
              case .data where state.connections.data[peer] == nil:
                state.connections.data[peer] = AuthenticatedConnection(socket: socket, keys: keys)
                state.received += 1
              default:
                Log.warn(
                  "mesh", "rank \(rank) refused a duplicate \(kind) connection from rank \(peer)")
              }
            case .failure(let refusal):
              state.lastRefusal = refusal.description
            }
          }
          arrivals.broadcast()
        }
      } catch {
        arrivals.withLock { $0.handshaking -= 1 }
        return .failure(.system("cannot start a thread to authenticate a connection: \(error)"))
      }
    }
  }

  /// Why an accepted connection was turned away, for the time-out message.
  private struct Refusal: Error, CustomStringConvertible {
    let description: String
  }

  /// Runs the job-token handshake on one accepted connection and reads its hello: which
  /// higher rank it comes from and what it is for; with the connection's keys.
  private static func authenticate(
    _ socket: TCPSocket, rank: Int, size: Int, token: JobToken, prefix: String, purpose: String
  ) -> Result<(Int, ConnectionKind, Handshake.SessionKeys), Refusal> {
    let client: Handshake.AcceptedClient
    do {
      try socket.setNoDelay()
      client = try Handshake.performAsServer(
        on: socket, token: token, purpose: purpose, deadline: .after(handshakeTimeout))
    } catch {
      Log.warn("mesh", "rank \(rank) refused a connection: \(error)")
      return .failure(Refusal(description: "\(error)"))
    }
    let fields = String(decoding: client.hello, as: UTF8.self).split(separator: " ")
    guard fields.count == 5, fields[0] == "kaitian-peer", fields[1] == "1",
      let peer = Int(fields[2]), peer > rank, peer < size,
      let kind = ConnectionKind(rawValue: String(fields[3])), fields[4] == prefix
    else {
      Log.warn("mesh", "rank \(rank) refused a connection with an unexpected hello")
      return .failure(
        Refusal(description: "a connection with an unexpected hello (another job or communicator?)")
      )
    }
    return .success((peer, kind, client.keys))
  }
}
