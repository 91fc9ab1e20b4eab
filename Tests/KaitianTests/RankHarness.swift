import Glibc
import KaitianAuth
import KaitianPOSIX
import KaitianStore
import Synchronization
import Testing

@testable import Kaitian

/// Runs `size` ranks as threads of this process over one in-memory store.
///
/// `hosts` gives each rank's host identity: equal identities share memory, others use TCP, so
/// one harness covers shared memory, TCP and a mix of both.
enum RankHarness {
  enum Layout: String, CaseIterable, CustomStringConvertible {
    case sharedMemory
    case tcp
    case mixed
    /// Hosts of 2 ranks each (ranks 0-1, 2-3, ...): with an even size, the shape of the
    /// hierarchical allreduce.
    case hostsOfTwo
    /// Hosts of 3 ranks each (ranks 0-2, 3-5, ...).
    case hostsOfThree

    var description: String { rawValue }

    /// The three ways to mix transports, for tests run at every size.
    static let transports: [Layout] = [.sharedMemory, .tcp, .mixed]

    func host(of rank: Int) -> String {
      switch self {
      case .sharedMemory: "host-a"
      case .tcp: "host-\(rank)"
      case .mixed: rank < 2 ? "host-a" : "host-b"
      case .hostsOfTwo: "host-\(rank / 2)"
      case .hostsOfThree: "host-\(rank / 3)"
      }
    }
  }

  static let token = try! JobToken("test-token-0123456789")

  /// Creates the communicators in parallel, runs `body` on each rank's thread, and returns the
  /// errors each rank threw (nil where it succeeded).
  static func run(
    size: Int, layout: Layout = .sharedMemory, timeoutSeconds: Double = 20,
    host: String = "127.0.0.1",
    configure: @escaping @Sendable (_ rank: Int, inout CommunicatorOptions) -> Void = { _, _ in },
    _ body: @escaping @Sendable (Communicator) throws -> Void
  ) -> [String?] {
    let store = InMemoryStore()
    let prefix = "test-\(UInt64.random(in: 0...UInt64.max))"
    let outcomes = Mutex<[String?]>(Array(repeating: nil, count: size))
    let threads = (0..<size).map { rank in
      try! OSThread.spawn(name: "rank \(rank)") {
        var options = CommunicatorOptions(
          hostIdentity: layout.host(of: rank), timeoutSeconds: timeoutSeconds,
          advertisedHost: host, storePrefix: prefix, ringThresholdBytes: 1024,
          sharedMemoryRingBytes: 64 * 1024, hierarchicalSegmentBytes: 1024)
        configure(rank, &options)
        do {
          let communicator = try Communicator(
            store: store, rank: rank, size: size, token: token, options: options)
          defer { communicator.destroy() }
          try body(communicator)
        } catch {
          outcomes.withLock { $0[rank] = "\(error)" }
        }
      }
    }
    for thread in threads { thread.join() }
    return outcomes.withLock { $0 }
  }
}
