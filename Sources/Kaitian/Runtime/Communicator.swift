import CKaitianShim
import Glibc
import KaitianAuth
import KaitianPOSIX
import KaitianStore
import Synchronization

/// A group of ranks that run collectives together: Kaitian's host-memory engine.
///
/// Every call returns a `Work` at once and runs later on the communicator's engine thread, in
/// the order the calls were made. Buffers are borrowed until the work completes (as in NCCL):
/// the caller must keep them alive and untouched until then. Threading: all methods may be
/// called from any thread, but the order of calls is the order of issue, so a program must
/// issue its collectives from one thread (or order them itself).
public final class Communicator: @unchecked Sendable {
  public let rank: Int
  public let size: Int
  public let options: CommunicatorOptions
  private let mesh: Mesh
  /// Which ranks share a host, when the hierarchical allreduce applies (see `HostLayout`) and
  /// `options.hierarchicalAllReduce` allows it; nil otherwise.
  let hostLayout: HostLayout?
  private let health = CommunicatorHealth()
  private let scratch = ScratchBuffer()
  private let peeked: PeekedTags
  private var engine: Engine!
  private var watchdog: Watchdog!
  private let sequences: Mutex<Sequences>
  private let destroyed = Atomic<Bool>(false)

  private struct Sequences {
    var collective: UInt64 = 0
    var sent: [UInt64]

    /// The next number of a send to `peer`: each peer counts on its own, so a send matches the
    /// peer's receive of the same number.
    mutating func nextSend(to peer: Int) -> UInt64 {
      sent[peer] += 1
      return sent[peer]
    }
  }

  /// How many receives from each peer have started, counted on the engine thread when each one
  /// runs rather than when it is issued, because a receive from any rank learns its peer (and
  /// so its number) only then. Engine thread only.
  private var receivesStarted: [UInt64]

  /// The next number of a receive from `peer` (see `receivesStarted`). Engine thread only.
  private func nextReceive(from peer: Int) -> UInt64 {
    receivesStarted[peer] += 1
    return receivesStarted[peer]
  }

  /// Joins the group: publishes this rank in `store`, connects to every peer (authenticated
  /// with `token`), and maps shared memory with peers on the same host. Blocks until every rank
  /// has joined or `options.timeoutSeconds` passes.
  public init(
    store: any RendezvousStore, rank: Int, size: Int, token: JobToken,
    options: CommunicatorOptions = CommunicatorOptions(), advertisedHostHint: String? = nil
  ) throws(KaitianError) {
    guard size >= 1, rank >= 0, rank < size else {
      throw .invalidArgument("rank \(rank) is outside a communicator of size \(size)")
    }
    self.rank = rank
    self.size = size
    self.options = options
    self.sequences = Mutex(Sequences(sent: Array(repeating: 0, count: size)))
    self.receivesStarted = Array(repeating: 0, count: size)
    self.peeked = PeekedTags(size: size)
    let host = try Self.advertisedHost(options: options, hint: advertisedHostHint)
    mesh = try Mesh.establish(
      store: store, rank: rank, size: size, token: token, options: options,
      advertisedHost: host)
    hostLayout =
      options.hierarchicalAllReduce
      ? HostLayout(identities: mesh.endpoints.map(\.hostIdentity)) : nil
    engine = try Engine(rank: rank, health: health) { [unowned self] error in fail(error) }
    watchdog = try Watchdog(
      rank: rank, controls: mesh.controls, endpoints: mesh.endpoints,
      heartbeatTimeoutSeconds: options.heartbeatTimeoutSeconds,
      onDeparture: { [unowned self] peer in mesh.links[peer]?.peerDeparted() },
      onFailure: { [unowned self] error in fail(error) })
  }

  deinit { destroy() }

  /// Finishes the calls already issued, tells the peers this rank is leaving, and closes
  /// every connection. Later calls fail with an invalid-usage error.
  public func destroy() {
    guard !destroyed.exchange(true, ordering: .acquiringAndReleasing) else { return }
    engine.stop()
    watchdog.stop(sayGoodbye: !health.isFailed)
    for link in mesh.links { link?.shutDown() }
  }

  /// Fails this communicator on every rank: pending and later calls fail with `reason`.
  public func abort(reason: String) {
    fail(KaitianError(.invalidUsage, rank: rank, "aborted by the application: \(reason)"))
  }

  /// The first fatal error, if the communicator has failed.
  public var failure: KaitianError? { health.failure }

  /// Records the first failure, tells every peer, and unblocks the engine thread.
  private func fail(_ error: KaitianError) {
    let failure = error.rank == nil ? error.attributed(rank: rank, call: error.call) : error
    guard health.fail(failure) else { return }
    Log.warn("comm", failure.description)
    watchdog?.broadcastAbort(failure)
    for link in mesh.links { link?.shutDown() }
  }

  private static func advertisedHost(
    options: CommunicatorOptions, hint: String?
  ) throws(KaitianError) -> String {
    if let host = options.advertisedHost { return host }
    do {
      if let address = try NetworkInterfaces.addressFromEnvironment() { return address.host }
    } catch {
      throw .invalidArgument("KAITIAN_SOCKET_IFNAME: \(error)")
    }
    return hint ?? "127.0.0.1"
  }

  // MARK: Submitting calls

  /// What every collective shares: its tag fields and, for messages, a readable name.
  struct CallDescription {
    var kind: CollectiveKind
    var dataType: DataType = .uint8
    var op: ReduceOp = .sum
    var count: Int = 0
    var root: Int = -1
    var detail: TagDetail = .none
    /// alltoallv's element counts per peer, which its tags carry link by link.
    var linkCounts: LinkCounts? = nil
  }

  /// Queues a collective: numbers it, builds its tag, and runs `body` on the engine thread.
  func submitCollective(
    _ call: CallDescription, _ body: @escaping (CallContext) throws(KaitianError) -> Void
  ) -> Work {
    let sequence = sequences.withLock { state -> UInt64 in
      state.collective += 1
      return state.collective
    }
    return submit(
      call, key: CallKey(stream: .collective, sequence: sequence), sequence: sequence, body)
  }

  /// Queues a send: sends are numbered per peer when issued (receives when they run).
  func submitSend(
    _ call: CallDescription, to peer: Int,
    _ body: @escaping (CallContext) throws(KaitianError) -> Void
  ) -> Work {
    let sequence = sequences.withLock { $0.nextSend(to: peer) }
    return submit(
      call, key: CallKey(stream: .pointToPoint, sequence: sequence), sequence: sequence,
      name: "send #\(sequence) to rank \(peer) \(describe(call))", body)
  }

  /// Queues a receive from `peer`, or from whichever rank sends first when `peer` is nil (its
  /// tag must match then, as for gloo's recvAnysource). Runs `body` with the context of the
  /// receive once its peer is known, and records that peer as the work's source.
  func submitReceive(
    _ call: CallDescription, from peer: Int?,
    _ body: @escaping (CallContext, Int) throws(KaitianError) -> Void
  ) -> Work {
    let name = "recv from \(peer.map { "rank \($0)" } ?? "any rank") \(describe(call))"
    let work = Work(name: name)
    if destroyed.load(ordering: .relaxed) {
      work.complete(
        KaitianError(.invalidUsage, rank: rank, call: name, "the communicator was destroyed"))
      return work
    }
    let others = (0..<size).filter { $0 != rank }
    engine.submit(
      QueuedCall(work: work) { [unowned self] () throws(KaitianError) in
        do throws(KaitianError) {
          let source: Int
          if let peer {
            source = peer
          } else {
            let driver = makeContext(
              call, key: CallKey(stream: .pointToPoint, sequence: 0), sequence: 0, name: name)()
            source = try driver.awaitSender(among: others) { peer, tag in
              tag.kind == .sendRecv && tag.detail == call.detail
                && tag.sequence == receivesStarted[peer] + 1
            }
          }
          let sequence = nextReceive(from: source)
          let context = makeContext(
            call, key: CallKey(stream: .pointToPoint, sequence: sequence), sequence: sequence,
            name: name)()
          try body(context, source)
          try context.finish()
          work.source = source
        } catch {
          throw error.attributed(rank: self.rank, call: name)
        }
      })
    return work
  }

  /// Queues sends and receives that run together, as one call (see `pointToPointBatch`).
  ///
  /// Each keeps its own number in its peer's and direction's sequence, and so its own tag, so a
  /// peer may match it with a plain send or receive. Operations on the same peer and direction
  /// run one after another, in the order given (a link carries one message at a time each way);
  /// all others progress at once.
  func submitPointToPointBatch(
    _ operations: [(call: CallDescription, peer: Int, sending: Bool, transfer: Transfer)]
  ) -> Work {
    // Sends are numbered now, receives when the batch runs (see `receivesStarted`).
    let sendNumbers = self.sequences.withLock { state in
      operations.map { $0.sending ? state.nextSend(to: $0.peer) : 0 }
    }
    let sends = operations.count { $0.sending }
    let name = "send/recv batch (\(sends) send(s), \(operations.count - sends) receive(s))"
    let work = Work(name: name)
    if destroyed.load(ordering: .relaxed) {
      work.complete(
        KaitianError(.invalidUsage, rank: rank, call: name, "the communicator was destroyed"))
      return work
    }
    // Wave k holds the k-th operation of every (peer, direction).
    var waves: [[Int]] = []
    var seen: [Int: Int] = [:]
    for (index, operation) in operations.enumerated() {
      let lane = operation.peer * 2 + (operation.sending ? 1 : 0)
      let wave = seen[lane, default: 0]
      seen[lane] = wave + 1
      if wave == waves.count { waves.append([]) }
      waves[wave].append(index)
    }
    // Drives the operations' transfers (their deadline, their errors' name); sends no tag itself.
    let driver = makeContext(
      CallDescription(kind: .sendRecv), key: CallKey(stream: .pointToPoint, sequence: 0),
      sequence: 0, name: name)
    engine.submit(
      QueuedCall(work: work) { [unowned self] () throws(KaitianError) in
        do throws(KaitianError) {
          let driver = driver()
          let sequences = operations.indices.map { index in
            operations[index].sending
              ? sendNumbers[index] : nextReceive(from: operations[index].peer)
          }
          for wave in waves {
            try driver.runTogether(
              wave.map { index in
                let operation = operations[index]
                let context = makeContext(
                  operation.call, key: CallKey(stream: .pointToPoint, sequence: sequences[index]),
                  sequence: sequences[index], name: name)()
                return (context, operation.transfer)
              })
          }
        } catch {
          throw error.attributed(rank: self.rank, call: name)
        }
      })
    return work
  }

  private func submit(
    _ call: CallDescription, key: CallKey, sequence: UInt64, name: String? = nil,
    _ body: @escaping (CallContext) throws(KaitianError) -> Void
  ) -> Work {
    let name =
      name ?? "\(call.kind) #\(sequence)" + (call.kind == .barrier ? "" : " \(describe(call))")
    let work = Work(name: name)
    if destroyed.load(ordering: .relaxed) {
      work.complete(
        KaitianError(.invalidUsage, rank: rank, call: name, "the communicator was destroyed"))
      return work
    }
    let context = makeContext(call, key: key, sequence: sequence, name: name)
    engine.submit(
      QueuedCall(work: work) { () throws(KaitianError) in
        do throws(KaitianError) {
          let context = context()
          try body(context)
          try context.finish()
        } catch {
          throw error.attributed(rank: self.rank, call: name)
        }
      })
    return work
  }

  /// "(float32 x 1024, sum)": a call's arguments, for its name.
  private func describe(_ call: CallDescription) -> String {
    var text = "(\(call.dataType) x \(call.count)"
    if [.allReduce, .reduce, .reduceScatter].contains(call.kind) { text += ", \(call.op)" }
    if call.root >= 0 { text += ", root \(call.root)" }
    if case .messageTag(let tag) = call.detail { text += ", tag \(tag)" }
    return text + ")"
  }

  /// What builds a call's context on the engine thread, when the call starts (its deadline
  /// counts from then).
  private func makeContext(
    _ call: CallDescription, key: CallKey, sequence: UInt64, name: String
  ) -> () -> CallContext {
    let header = OpHeader(
      kind: call.kind, sequence: sequence, dataType: call.dataType, op: call.op,
      count: Int64(call.count), root: Int32(call.root), detail: call.detail,
      sender: Int32(rank))
    return { [unowned self] in
      CallContext(
        rank: rank, size: size, name: name, links: mesh.links,
        key: key, header: header,
        linkCounts: call.linkCounts,
        timeoutSeconds: options.timeoutSeconds,
        spinNanoseconds: Int64(options.spinMicroseconds) * 1000, health: health,
        doorbell: mesh.doorbell, scratch: scratch, peeked: peeked)
    }
  }
}
