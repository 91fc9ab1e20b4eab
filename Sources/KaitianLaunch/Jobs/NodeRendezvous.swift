import Glibc
import KaitianPOSIX
import KaitianStore
import Synchronization

/// The launchers of one job on several hosts meeting in the job's store: each registers its
/// groups under its node rank, and every node derives the same global numbering from the
/// registrations (node by node, group by group), so no node has to hand out ranks.
///
/// Written against `any KeyValueStore`, so that Kaitian's own store server and any other store
/// with the same operations (Redis) serve the same protocol. Keys live under
/// `kaitian/run/<job id>/`: `node/<r>` (a registration), `failed` (the first failure, which
/// stops every node) and `done/<r>` (a node whose workers all exited 0).
package struct NodeRendezvous: Sendable {
  package let store: any KeyValueStore
  package let jobID: String
  package let nodeRank: Int
  package let nodeCount: Int

  /// What one node tells the others.
  package struct Registration: Equatable {
    package var nodeCount: Int
    package var hostID: String
    /// torch's store port (MASTER_PORT); node 0 chooses it.
    package var masterPort: String?
    /// KIND:COUNT per group, in order.
    package var groups: [String]

    /// Lines `key value`: readable with any store tool.
    package var encoded: [UInt8] {
      var lines = ["nnodes \(nodeCount)", "host \(hostID)"]
      if let masterPort { lines.append("master-port \(masterPort)") }
      lines += groups.map { "group \($0)" }
      return Array(lines.joined(separator: "\n").utf8)
    }

    package init(nodeCount: Int, hostID: String, masterPort: String?, groups: [String]) {
      self.nodeCount = nodeCount
      self.hostID = hostID
      self.masterPort = masterPort
      self.groups = groups
    }

    package init?(decoding bytes: [UInt8]) {
      var nodeCount: Int?
      var hostID: String?
      var masterPort: String?
      var groups: [String] = []
      for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
        guard let space = line.firstIndex(of: " ") else { return nil }
        let value = String(line[line.index(after: space)...])
        switch line[..<space] {
        case "nnodes": nodeCount = Int(value)
        case "host": hostID = value
        case "master-port": masterPort = value
        case "group": groups.append(value)
        default: return nil
        }
      }
      guard let nodeCount, let hostID else { return nil }
      self.init(nodeCount: nodeCount, hostID: hostID, masterPort: masterPort, groups: groups)
    }

    /// The worker count of this node: the COUNT of every KIND:COUNT.
    package var workers: Int {
      groups.reduce(0) { $0 + (Int($1.split(separator: ":").last ?? "") ?? 0) }
    }
  }

  private var prefix: String { "kaitian/run/\(jobID)/" }
  private func nodeKey(_ rank: Int) -> String { prefix + "node/\(rank)" }
  private var failedKey: String { prefix + "failed" }

  /// Registers this node and waits for every other one; returns this node's place in the job
  /// and torch's MASTER_PORT. `progress` hears which nodes are still missing every few seconds.
  package func join(
    _ own: Registration, timeoutSeconds: Double, progress: (String) -> Void
  ) throws(LaunchError) -> (layout: NodeLayout, masterPort: String) {
    let mine = own.encoded
    let stored = try call("register node \(nodeRank)") { () throws(StoreError) in
      try store.compareAndSet(key: nodeKey(nodeRank), expected: nil, desired: mine)
    }
    guard stored == mine else {
      let other = stored.flatMap(Registration.init(decoding:))?.hostID ?? "another launcher"
      throw LaunchError(
        "node rank \(nodeRank) of job \(jobID) is already taken by \(other): give every host "
          + "its own --node-rank (0 to \(nodeCount - 1))")
    }
    let start = LocalProcessGroup.now()
    var lastReport = start
    var registrations: [Int: Registration] = [:]
    while registrations.count < nodeCount {
      for rank in 0..<nodeCount where registrations[rank] == nil {
        guard
          let bytes = try call(
            "read node \(rank)'s registration",
            { () throws(StoreError) in
              try store.tryGet(key: nodeKey(rank))
            })
        else { continue }
        guard let registration = Registration(decoding: bytes) else {
          throw LaunchError(
            "node \(rank)'s registration in the store is not one kaitian run wrote: "
              + "\(String(decoding: bytes.prefix(200), as: UTF8.self))")
        }
        guard registration.nodeCount == nodeCount else {
          throw LaunchError(
            "node \(rank) (\(registration.hostID)) was started with --nnodes "
              + "\(registration.nodeCount) but this node with --nnodes \(nodeCount): give every "
              + "node the same count")
        }
        registrations[rank] = registration
      }
      if registrations.count == nodeCount { break }
      let missing = (0..<nodeCount).filter { registrations[$0] == nil }
      let now = LocalProcessGroup.now()
      guard now - start < timeoutSeconds else {
        throw LaunchError(
          "\(Self.nodes(missing)) "
            + "of \(nodeCount) did not join job \(jobID) within \(Int(timeoutSeconds)) s: start "
            + "kaitian run with --nnodes \(nodeCount), its --node-rank, the same --master-addr, "
            + "--job-id and token on each (or raise --join-timeout)")
      }
      if now - lastReport >= 5 {
        lastReport = now
        progress(
          "waiting for \(Self.nodes(missing)) to join "
            + "(\(Int(now - start)) s of \(Int(timeoutSeconds)) s)")
      }
      usleep(100_000)
    }
    guard let masterPort = registrations[0]?.masterPort else {
      throw LaunchError("node 0's registration has no master port: is node 0 kaitian run?")
    }
    let before = (0..<nodeRank).compactMap { registrations[$0] }
    let layout = NodeLayout(
      nodeRank: nodeRank, nodeCount: nodeCount, firstRank: before.reduce(0) { $0 + $1.workers },
      firstGroup: before.reduce(0) { $0 + $1.groups.count },
      worldSize: registrations.values.reduce(0) { $0 + $1.workers }, hostID: own.hostID)
    return (layout, masterPort)
  }

  /// Records this node's success; node 0 then keeps serving the store until every node is
  /// done, since their workers still use it, or until one fails or stops sending heartbeats.
  package func finish(progress: (String) -> Void) throws(LaunchError) {
    try markDone()
    guard nodeRank == 0 else { return }
    let silenceLimit = 30.0
    var lastReport = LocalProcessGroup.now()
    var heartbeats: [Int: (value: String?, since: Double)] = [:]
    while true {
      let now = LocalProcessGroup.now()
      let state: (nodes: [Int], failure: String?)
      do {
        state = try unfinished()
        for node in state.nodes {
          let value = try heartbeat(of: node)
          if heartbeats[node]?.value != value || heartbeats[node] == nil {
            heartbeats[node] = (value, now)
          }
        }
      } catch {
        throw LaunchError("node 0 cannot read the job's state from its own store: \(error)")
      }
      if let failure = state.failure {
        throw LaunchError("this node's ranks succeeded but the job failed: \(failure)")
      }
      if state.nodes.isEmpty { return }
      if let silent = state.nodes.first(where: { now - heartbeats[$0]!.since > silenceLimit }) {
        throw LaunchError(
          reportFailure(
            "node \(silent) sent no heartbeat for \(Int(silenceLimit)) s without finishing (was "
              + "its kaitian run killed?)"))
      }
      if now - lastReport >= 10 {
        lastReport = now
        progress(
          "waiting for \(Self.nodes(state.nodes)) to finish (they use this node's store)")
      }
      usleep(200_000)
    }
  }

  /// "node 2" or "nodes 1, 3", for the progress lines and errors.
  private static func nodes(_ ranks: [Int]) -> String {
    "node\(ranks.count == 1 ? "" : "s") \(ranks.map(String.init).joined(separator: ", "))"
  }

  /// Publishes why the job must stop, unless another node already has; returns the failure
  /// that stands (the first one).
  @discardableResult
  package func reportFailure(_ text: String) -> String {
    let bytes = Array("node \(nodeRank): \(text)".utf8)
    let stored = try? store.compareAndSet(key: failedKey, expected: nil, desired: bytes)
    return String(decoding: stored ?? bytes, as: UTF8.self)
  }

  /// The failure another node published, if any.
  package func failure() throws(StoreError) -> String? {
    try store.tryGet(key: failedKey).map { String(decoding: $0, as: UTF8.self) }
  }

  /// Records that this node's workers all succeeded.
  package func markDone() throws(LaunchError) {
    try call("record that node \(nodeRank) is done") { () throws(StoreError) in
      try store.set(key: prefix + "done/\(nodeRank)", value: Array("ok".utf8))
    }
  }

  /// Shows that this node's launcher is alive: `beat` counts up, and a node whose count stops
  /// changing was killed without a chance to publish anything.
  package func beat(_ count: Int) throws(StoreError) {
    try store.set(key: prefix + "alive/\(nodeRank)", value: Array("\(count)".utf8))
  }

  /// The last heartbeat of node `rank`, if it has sent one.
  package func heartbeat(of rank: Int) throws(StoreError) -> String? {
    try store.tryGet(key: prefix + "alive/\(rank)").map { String(decoding: $0, as: UTF8.self) }
  }

  /// The nodes not done yet, or the failure that ended the job.
  package func unfinished() throws(StoreError) -> (nodes: [Int], failure: String?) {
    if let failure = try failure() { return ([], failure) }
    let done = Set(
      try store.keys(prefix: prefix + "done/").compactMap {
        Int($0.split(separator: "/").last ?? "")
      })
    return ((0..<nodeCount).filter { !done.contains($0) }, nil)
  }

  private func call<T>(
    _ what: String, _ body: () throws(StoreError) -> T
  ) throws(LaunchError) -> T {
    do {
      return try body()
    } catch {
      throw LaunchError("node \(nodeRank) cannot \(what) in the job's store: \(error)")
    }
  }
}

/// Watches the store for another node's failure while this node's workers run, on a thread of
/// its own, so that the supervisor only reads a flag; it also sends this node's heartbeat.
package final class FailureWatch: Sendable {
  /// What the thread and the supervisor share.
  private final class State: Sendable {
    package let reason = Mutex<String?>(nil)
    package let stopped = Atomic<Bool>(false)
  }

  private let state = State()
  private let thread: OSThread

  /// Polls every `intervalSeconds`; a store that cannot be reached any more (node 0 gone)
  /// counts as a failure too, since the job cannot go on without it.
  package init(rendezvous: NodeRendezvous, intervalSeconds: Double) throws(LaunchError) {
    let state = state
    do {
      thread = try OSThread.spawn(name: "kaitian-watch") {
        while !state.stopped.load(ordering: .acquiring) {
          do {
            if let failure = try rendezvous.failure() {
              state.reason.withLock { $0 = failure }
              return
            }
          } catch {
            state.reason.withLock { $0 = "lost the job's store: \(error)" }
            return
          }
          usleep(UInt32(intervalSeconds * 1_000_000))
        }
      }
    } catch {
      throw LaunchError("cannot start the thread that watches other nodes: \(error)")
    }
  }

  /// The failure seen, if any.
  package var failure: String? { state.reason.withLock { $0 } }

  package func stop() {
    state.stopped.store(true, ordering: .releasing)
    thread.join()
  }
}
