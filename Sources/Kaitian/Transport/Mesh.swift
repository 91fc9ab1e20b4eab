import CKaitianShim
import Glibc
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
    let listener: TCPSocket
    do {
      listener = try TCPSocket.listen(host: listenHost(for: advertisedHost), port: 0)
    } catch {
      throw .system("rank \(rank) cannot listen for peers on \(advertisedHost): \(error)")
    }
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
      prefix: prefix, needsDataConnection: { !sharesMemory($0) }, deadline: deadline)

    var links: [PeerLink?] = Array(repeating: nil, count: size)
    for peer in 0..<size where peer != rank && !sharesMemory(peer) {
      links[peer] = try TCPLink(peer: peer, socket: connections.data[peer]!)
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

  /// Listens on the wildcard of the advertised address's family, so the advertised address
  /// (possibly an interface's) is always reachable.
  private static func listenHost(for advertised: String) -> String {
    advertised.contains(":") ? "::" : "0.0.0.0"
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
    var data: [TCPSocket?]
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
    prefix: String, needsDataConnection: @escaping @Sendable (Int) -> Bool, deadline: Deadline
  ) throws(KaitianError) -> Connections {
    let accepted = Mutex<Result<Connections, KaitianError>>(
      .success(Connections(control: [], data: [])))
    let expected = (rank + 1..<size).reduce(0) { $0 + 1 + (needsDataConnection($1) ? 1 : 0) }
    let acceptor: OSThread
    do {
      acceptor = try OSThread.spawn(name: "kaitian accept") {
        let result = acceptPeers(
          listener: listener, expected: expected, rank: rank, size: size, token: token,
          prefix: prefix, deadline: deadline)
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
          deadline: deadline)
        if needsDataConnection(peer) {
          connections.data[peer] = try dial(
            endpoints[peer], peer: peer, kind: .data, rank: rank, token: token, prefix: prefix,
            deadline: deadline)
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

  /// Distinguishes peer connections from store connections in the handshake.
  private static let handshakePurpose = "kaitian-peer"

  private static func hello(rank: Int, kind: ConnectionKind, prefix: String) -> [UInt8] {
    Array("kaitian-peer 1 \(rank) \(kind.rawValue) \(prefix)".utf8)
  }

  private static func dial(
    _ endpoint: PeerEndpoint, peer: Int, kind: ConnectionKind, rank: Int, token: JobToken,
    prefix: String, deadline: Deadline
  ) throws(KaitianError) -> TCPSocket {
    do {
      let socket = try TCPSocket.connect(
        host: endpoint.host, port: endpoint.port, deadline: deadline)
      try socket.setNoDelay()
      try Handshake.performAsClient(
        on: socket, token: token, purpose: handshakePurpose,
        hello: hello(rank: rank, kind: kind, prefix: prefix), deadline: deadline)
      return socket
    } catch {
      throw KaitianError(
        .systemError, rank: rank, call: "communicator set-up",
        "cannot connect to rank \(peer) at \(endpoint.host):\(endpoint.port) (host "
          + "'\(endpoint.hostIdentity)'): \(error); check KAITIAN_SOCKET_IFNAME or "
          + "KAITIAN_SOCKET_ADDR and firewalls")
    }
  }

  private static func acceptPeers(
    listener: TCPSocket, expected: Int, rank: Int, size: Int, token: JobToken, prefix: String,
    deadline: Deadline
  ) -> Result<Connections, KaitianError> {
    var connections = Connections(
      control: Array(repeating: nil, count: size), data: Array(repeating: nil, count: size))
    var received = 0
    var lastRefusal: String?
    while received < expected {
      let socket: TCPSocket
      do {
        socket = try listener.accept(deadline: deadline)
      } catch {
        let refusal = lastRefusal.map { "; the last refused connection: \($0)" } ?? ""
        return .failure(
          KaitianError(
            .timeout, rank: rank, call: "communicator set-up",
            "only \(received) of \(expected) connections from higher ranks arrived (\(error)); "
              + "a rank did not start or cannot reach this one\(refusal)"))
      }
      let hello: [UInt8]
      do {
        try socket.setNoDelay()
        hello = try Handshake.performAsServer(
          on: socket, token: token, purpose: handshakePurpose, deadline: .after(.seconds(5)))
      } catch {
        Log.warn("mesh", "rank \(rank) refused a connection: \(error)")
        lastRefusal = "\(error)"
        continue
      }
      let fields = String(decoding: hello, as: UTF8.self).split(separator: " ")
      guard fields.count == 5, fields[0] == "kaitian-peer", fields[1] == "1",
        let peer = Int(fields[2]), peer > rank, peer < size,
        let kind = ConnectionKind(rawValue: String(fields[3])), fields[4] == prefix
      else {
        Log.warn("mesh", "rank \(rank) refused a connection with an unexpected hello")
        lastRefusal = "a connection with an unexpected hello (another job or communicator?)"
        continue
      }
      switch kind {
      case .control where connections.control[peer] == nil: connections.control[peer] = socket
      case .data where connections.data[peer] == nil: connections.data[peer] = socket
      default:
        Log.warn("mesh", "rank \(rank) refused a duplicate \(kind) connection from rank \(peer)")
        continue
      }
      received += 1
    }
    return .success(connections)
  }
}
