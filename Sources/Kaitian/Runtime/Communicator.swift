import CKaitianShim
import Glibc
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
  private let health = CommunicatorHealth()
  private let scratch = ScratchBuffer()
  private var engine: Engine!
  private var watchdog: Watchdog!
  private let sequences: Mutex<Sequences>
  private let destroyed = Atomic<Bool>(false)

  private struct Sequences {
    var collective: UInt64 = 0
    var sent: [UInt64]
    var received: [UInt64]

    /// The next number of a send to (or receive from) `peer`: each peer and direction counts
    /// on its own, so a send matches the peer's receive of the same number.
    mutating func nextPointToPoint(peer: Int, sending: Bool) -> UInt64 {
      if sending {
        sent[peer] += 1
        return sent[peer]
      }
      received[peer] += 1
      return received[peer]
    }
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
    self.sequences = Mutex(
      Sequences(
        sent: Array(repeating: 0, count: size), received: Array(repeating: 0, count: size)))
    let host = try Self.advertisedHost(options: options, hint: advertisedHostHint)
    mesh = try Mesh.establish(
      store: store, rank: rank, size: size, token: token, options: options,
      advertisedHost: host)
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
    var aux: Int64 = 0
    var sendAux: ((Int) -> Int64)? = nil
    var receiveAux: ((Int) -> Int64)? = nil
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

  /// Queues a point-to-point call: send/recv pairs are numbered per peer and direction.
  func submitPointToPoint(
    _ call: CallDescription, peer: Int, sending: Bool,
    _ body: @escaping (CallContext) throws(KaitianError) -> Void
  ) -> Work {
    let sequence = sequences.withLock { $0.nextPointToPoint(peer: peer, sending: sending) }
    return submit(
      call, key: CallKey(stream: .pointToPoint, sequence: sequence), sequence: sequence, body)
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
    let sequences = self.sequences.withLock { state in
      operations.map { state.nextPointToPoint(peer: $0.peer, sending: $0.sending) }
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
    _ call: CallDescription, key: CallKey, sequence: UInt64,
    _ body: @escaping (CallContext) throws(KaitianError) -> Void
  ) -> Work {
    var name = "\(call.kind) #\(sequence)"
    if call.kind != .barrier {
      name += " (\(call.dataType) x \(call.count)"
      if [.allReduce, .reduce, .reduceScatter].contains(call.kind) { name += ", \(call.op)" }
      if call.root >= 0 { name += ", root \(call.root)" }
      name += ")"
    }
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

  /// What builds a call's context on the engine thread, when the call starts (its deadline
  /// counts from then).
  private func makeContext(
    _ call: CallDescription, key: CallKey, sequence: UInt64, name: String
  ) -> () -> CallContext {
    let header = OpHeader(
      kind: call.kind, sequence: sequence, dataType: call.dataType, op: call.op,
      count: Int64(call.count), root: Int32(call.root), aux: call.aux, sender: Int32(rank))
    return { [unowned self] in
      CallContext(
        rank: rank, size: size, name: name, links: mesh.links,
        key: key, header: header,
        sendAux: call.sendAux, receiveAux: call.receiveAux,
        timeoutSeconds: options.timeoutSeconds,
        spinNanoseconds: Int64(options.spinMicroseconds) * 1000, health: health,
        doorbell: mesh.doorbell, scratch: scratch)
    }
  }
}
