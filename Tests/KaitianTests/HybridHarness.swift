import KaitianPOSIX
import KaitianStore
import Synchronization

@testable import Kaitian

/// Runs a hybrid job as threads of this process over one in-memory store: rank r declares
/// device kind `kinds[r]` on host `hosts[r]` (the host is also its memory-sharing identity).
enum HybridHarness {
  /// A named job layout for parameterized tests.
  struct Layout: CustomStringConvertible, Sendable {
    let description: String
    let kinds: [String]
    let hosts: [String]

    var size: Int { kinds.count }

    /// Kinds interleaved across ranks, so group order (by lowest rank) differs from kind order.
    static let equal2x2 = Layout(
      description: "2+2", kinds: ["mlu", "cuda", "cuda", "mlu"], hosts: one(4))
    static let unequal2x1 = Layout(
      description: "2+1", kinds: ["cuda", "mlu", "cuda"], hosts: one(3))
    static let unequal2x3 = Layout(
      description: "2+3", kinds: ["npu", "cuda", "npu", "cuda", "cuda"], hosts: one(5))
    static let threeKinds = Layout(
      description: "1+1+1", kinds: ["cuda", "mlu", "npu"], hosts: one(3))
    /// One kind on two hosts: two groups whose columns cross by TCP.
    static let twoHosts = Layout(
      description: "2+2 on two hosts", kinds: ["cpu", "cpu", "cpu", "cpu"],
      hosts: ["host-a", "host-b", "host-b", "host-a"])

    static let all = [equal2x2, unequal2x1, unequal2x3, threeKinds, twoHosts]

    private static func one(_ size: Int) -> [String] { Array(repeating: "host-a", count: size) }
  }

  /// Creates the hybrid communicators in parallel, runs `body` on each rank's thread, and
  /// returns the errors each rank threw (nil where it succeeded).
  /// `chunkBytes` is small by default so that allreduces of a few thousand elements cross the
  /// pipeline in several chunks, and with a padded tail.
  static func run(
    _ layout: Layout, timeoutSeconds: Double = 20, chunkBytes: Int = 4096,
    makeGroup:
      @escaping @Sendable (GroupMembership) throws(KaitianError) -> any GroupCollectives =
      HybridCommunicator.engineGroup,
    _ body: @escaping @Sendable (HybridCommunicator) throws -> Void
  ) -> [String?] {
    let store = InMemoryStore()
    let prefix = "hybrid-\(UInt64.random(in: 0...UInt64.max))"
    let outcomes = Mutex<[String?]>(Array(repeating: nil, count: layout.size))
    let threads = (0..<layout.size).map { rank in
      try! OSThread.spawn(name: "rank \(rank)") {
        let options = CommunicatorOptions(
          hostIdentity: layout.hosts[rank], timeoutSeconds: timeoutSeconds,
          advertisedHost: "127.0.0.1", storePrefix: prefix, ringThresholdBytes: 1024,
          sharedMemoryRingBytes: 64 * 1024, hybridChunkBytes: chunkBytes)
        do {
          let hybrid = try HybridCommunicator(
            store: store, rank: rank, size: layout.size,
            identity: RankIdentity(deviceKind: layout.kinds[rank], host: layout.hosts[rank]),
            token: RankHarness.token, options: options, makeGroup: makeGroup)
          defer { hybrid.destroy() }
          try body(hybrid)
        } catch {
          outcomes.withLock { $0[rank] = "\(error)" }
        }
      }
    }
    for thread in threads { thread.join() }
    return outcomes.withLock { $0 }
  }
}
