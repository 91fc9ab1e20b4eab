import CKaitianShim
import Glibc
import KaitianPOSIX

/// Everything one call needs on the engine thread: who the peers are, the tag that opens its
/// messages, its reduction kernel, its deadline, and the loop that drives its transfers.
///
/// Threading: created and used on the engine thread only.
final class CallContext {
  let rank: Int
  let size: Int
  let name: String
  let kernel: ReductionKernel
  let scratch: ScratchBuffer
  private let links: [PeerLink?]
  private let key: CallKey
  private let header: OpHeader
  private let linkCounts: LinkCounts?
  private let deadline: Int64
  private let timeoutSeconds: Double
  private let spinNanoseconds: Int64
  private let health: CommunicatorHealth
  private let doorbell: Doorbell?
  private let peeked: PeekedTags
  private var neighbourTagsExchanged = false

  init(
    rank: Int, size: Int, name: String, links: [PeerLink?], key: CallKey, header: OpHeader,
    linkCounts: LinkCounts? = nil,
    timeoutSeconds: Double, spinNanoseconds: Int64, health: CommunicatorHealth,
    doorbell: Doorbell?, scratch: ScratchBuffer, peeked: PeekedTags
  ) {
    self.rank = rank
    self.size = size
    self.name = name
    self.links = links
    self.key = key
    self.header = header
    self.kernel = ReductionKernel(dataType: header.dataType, op: header.op)
    self.linkCounts = linkCounts
    self.timeoutSeconds = timeoutSeconds
    self.deadline = kt_monotonic_ns() + Int64(timeoutSeconds * 1e9)
    self.spinNanoseconds = spinNanoseconds
    self.health = health
    self.doorbell = doorbell
    self.scratch = scratch
    self.peeked = peeked
  }

  var elementSize: Int { header.dataType.size }

  /// Runs a set of transfers to completion, all at once, so sends and receives to different
  /// peers (and both directions of one link) overlap.
  func run(_ transfers: [Transfer]) throws(KaitianError) {
    let transfers = withNeighbourTags(transfers)
    guard !transfers.isEmpty else { return }
    var states = try transfers.map { transfer throws(KaitianError) in
      try TransferProgress(transfer, link: link(to: transfer.peer), context: self)
    }
    try drive(&states)
  }

  /// Runs the transfers of several calls at once, each under its own call's tag, driven (and
  /// timed, and named in errors) by this context.
  ///
  /// Why: a batch of sends and receives (`Communicator.pointToPointBatch`) must progress all
  /// together, or two ranks that each send to the other before receiving would both wait for
  /// ring space the other never frees.
  func runTogether(_ parts: [(context: CallContext, transfer: Transfer)]) throws(KaitianError) {
    var states = try parts.map { part throws(KaitianError) in
      try TransferProgress(part.transfer, link: link(to: part.transfer.peer), context: part.context)
    }
    guard !states.isEmpty else { return }
    try drive(&states)
  }

  private func drive(_ states: inout [TransferProgress]) throws(KaitianError) {
    var lastProgress = kt_monotonic_ns()
    var spins = 0
    while true {
      let ticket = doorbell?.ticket ?? 0
      var progressed = false
      var pending = 0
      for index in states.indices where !states[index].isDone {
        do {
          progressed = try states[index].advance() || progressed
        } catch {
          throw explain(error)
        }
        if !states[index].isDone { pending += 1 }
      }
      if pending == 0 { return }
      if health.isFailed { throw explain(nil) }
      let now = kt_monotonic_ns()
      if progressed {
        lastProgress = now
        continue
      }
      if now >= deadline { throw timedOut(states) }
      if now - lastProgress < spinNanoseconds {
        // Yield now and then: when ranks outnumber free cores, the peer we wait for may need
        // this core to make the progress we are spinning for.
        spins &+= 1
        if spins % 32 == 0 { sched_yield() } else { kt_cpu_relax() }
        continue
      }
      sleep(
        until: states.filter { !$0.isDone }.map { ($0.link, $0.isSend) }, ticket: ticket, now: now)
    }
  }

  /// Waits until one of `peers` opens its next message to this rank with a tag that `accepts`,
  /// and returns that peer; the tag stays peeked for the receive that follows. Peers are tried
  /// in turn from the lowest, so the first sender whose tag has arrived wins.
  ///
  /// Why peeking: which rank a receive from any rank matches is decided by who sends first,
  /// and that is only known from the tags that have arrived (as MPI's wildcard receive).
  func awaitSender(
    among peers: [Int], accepts: (Int, OpHeader) -> Bool
  ) throws(KaitianError) -> Int {
    let links = try peers.map { peer throws(KaitianError) in try link(to: peer) }
    let started = kt_monotonic_ns()
    var spins = 0
    while true {
      let ticket = doorbell?.ticket ?? 0
      for link in links {
        let tag: OpHeader?
        do {
          tag = try peeked.peek(link)
        } catch {
          throw explain(error)
        }
        if let tag, accepts(link.peer, tag) { return link.peer }
      }
      if health.isFailed { throw explain(nil) }
      let now = kt_monotonic_ns()
      if now >= deadline {
        throw KaitianError(
          .timeout, rank: rank, call: name,
          "timed out after \(formatSeconds(timeoutSeconds)) s waiting for a matching send from "
            + "any of ranks \(peers); none of them sent one (raise KAITIAN_TIMEOUT if they are just slow)"
        )
      }
      if now - started < spinNanoseconds {
        spins &+= 1
        if spins % 32 == 0 { sched_yield() } else { kt_cpu_relax() }
        continue
      }
      sleep(until: links.map { ($0, false) }, ticket: ticket, now: now)
    }
  }

  /// Hands the tag bytes an any-source receive peeked from `peer` to the transfer that owns
  /// them; returns how many were put at the front of `buffer`.
  func takePeekedTag(from peer: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
    peeked.take(from: peer, into: buffer)
  }

  /// Makes sure the call's tags went around the ring, for calls whose algorithm ran no
  /// transfers at all. Call once after the algorithm.
  func finish() throws(KaitianError) {
    if !neighbourTagsExchanged { try run([]) }
  }

  /// Every collective's first step also carries its tag to the right neighbour and takes one
  /// from the left, riding on the algorithm's own messages where it has them there.
  ///
  /// Why: an algorithm in which some rank only sends (a broadcast root, a reduce leaf) would
  /// never compare its call with anybody's, so ranks that disagree about the root would both
  /// "succeed" with wrong data. With the ring every rank checks its left neighbour, so all
  /// ranks agree or somebody reports the difference, before any result is final.
  private func withNeighbourTags(_ transfers: [Transfer]) -> [Transfer] {
    guard !neighbourTagsExchanged else { return transfers }
    neighbourTagsExchanged = true
    guard size > 1, key.stream == .collective else { return transfers }
    let right = (rank + 1) % size
    let left = (rank + size - 1) % size
    var all = transfers
    let empty = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    if !transfers.contains(where: { $0.isSend && $0.peer == right }) {
      all.append(.send(UnsafeRawBufferPointer(empty), to: right))
    }
    if !transfers.contains(where: { !$0.isSend && $0.peer == left }) {
      all.append(.receive(empty, from: left))
    }
    return all
  }

  /// The tag for the first message of this call on `link`, or nil when it was already sent.
  func tagToSend(on link: PeerLink) -> OpHeader? {
    guard link.lastTagSent != key else { return nil }
    link.lastTagSent = key
    var tag = header
    tag.sender = Int32(rank)
    if let linkCounts { tag.detail = .linkCount(Int64(linkCounts.send[link.peer])) }
    return tag
  }

  /// The tag expected first from `link`, or nil when it already arrived during this call.
  func tagToReceive(on link: PeerLink) -> OpHeader? {
    guard link.lastTagReceived != key else { return nil }
    link.lastTagReceived = key
    var tag = header
    tag.sender = Int32(link.peer)
    if let linkCounts { tag.detail = .linkCount(Int64(linkCounts.receive[link.peer])) }
    return tag
  }

  func mismatch(expected: OpHeader, received: OpHeader?, peer: Int) -> KaitianError {
    guard let received else { return OpHeader.notATag(from: peer) }
    let fields = expected.mismatch(with: received, peer: peer, localRank: rank) ?? ""
    return KaitianError(
      .mismatch,
      "collectives differ across ranks: \(fields); every rank must issue the same "
        + "collectives in the same order with the same arguments")
  }

  private func link(to peer: Int) throws(KaitianError) -> PeerLink {
    guard peer >= 0, peer < links.count, peer != rank, let link = links[peer] else {
      preconditionFailure("algorithm addressed rank \(peer) from rank \(rank) of \(size)")
    }
    return link
  }

  /// Sleeps until one of `waits` (a link, and whether this rank sends on it) may progress, or
  /// the deadline.
  private func sleep(until waits: [(link: PeerLink, isSend: Bool)], ticket: UInt32, now: Int64) {
    let remaining = deadline - now
    var descriptors: [pollfd] = []
    var usesDoorbell = false
    for wait in waits {
      switch wait.link.waitSource {
      case .doorbell: usesDoorbell = true
      case .socket(let fd):
        let events = wait.isSend ? Int16(POLLOUT) : Int16(POLLIN)
        descriptors.append(pollfd(fd: fd, events: events, revents: 0))
      }
    }
    let cap: Int64 = 100_000_000
    if descriptors.isEmpty, let doorbell {
      doorbell.sleep(ifStill: ticket, timeoutNanoseconds: min(remaining, cap))
    } else {
      // Sockets and shared memory at once: poll in short slices so a doorbell is not missed
      // for long.
      let sliceNanoseconds = usesDoorbell ? 200_000 : min(remaining, cap)
      let milliseconds = Int32(max(1, sliceNanoseconds / 1_000_000))
      // Not retried on EINTR: an interrupted slice just ends early, and the caller checks the
      // deadline and the communicator's health before it waits again.
      _ = poll(&descriptors, nfds_t(descriptors.count), usesDoorbell ? 0 : milliseconds)
      if usesDoorbell, let doorbell {
        doorbell.sleep(ifStill: ticket, timeoutNanoseconds: sliceNanoseconds)
      }
    }
  }

  /// Prefers the communicator's recorded failure (it often says why a link broke, for example a
  /// peer's mismatch report) over the local symptom.
  private func explain(_ local: KaitianError?) -> KaitianError {
    if local == nil || local?.code == .remoteError {
      // A broken link usually means the watchdog is about to learn the reason.
      let waitUntil = kt_monotonic_ns() + 300_000_000
      while !health.isFailed && kt_monotonic_ns() < waitUntil { usleep(5_000) }
    }
    let error = health.failure ?? local ?? KaitianError(.internalError, "communicator failed")
    return error.attributed(rank: rank, call: name)
  }

  private func timedOut(_ states: [TransferProgress]) -> KaitianError {
    let waiting = states.filter { !$0.isDone }.map { state in
      let verb = state.isSend ? "sending to" : "receiving from"
      return "\(verb) rank \(state.link.peer) (\(state.doneBytes) of \(state.totalBytes) bytes)"
    }
    return KaitianError(
      .timeout, rank: rank, call: name,
      "timed out after \(formatSeconds(timeoutSeconds)) s \(waiting.joined(separator: ", ")); "
        + "the peer is stuck or did not make this call (raise KAITIAN_TIMEOUT if it is just slow)"
    )
  }
}

func formatSeconds(_ seconds: Double) -> String {
  seconds == seconds.rounded() ? String(Int(seconds)) : String(seconds)
}

/// alltoallv's element counts per peer: each link's tag carries the count that link moves, so
/// two ranks that disagree on it fail instead of misreading each other's blocks.
struct LinkCounts {
  /// Elements this rank sends to each rank.
  let send: [Int]
  /// Elements this rank receives from each rank.
  let receive: [Int]
}
