import Glibc
import KaitianPOSIX

/// How a communicator finds and talks to its peers. Every field has an environment variable
/// (documented in the README), read by `fromEnvironment()`, in the spirit of NCCL_*.
public struct CommunicatorOptions: Sendable {
  /// Which transport carries data between two ranks.
  public enum Transport: String, Sendable, CaseIterable {
    /// Shared memory between ranks with the same host identity, TCP otherwise.
    case auto
    /// TCP between every pair, even on one host (for testing and benchmarking).
    case tcp
    /// Shared memory between every pair; fails unless all ranks share a host.
    case shm
  }

  /// Ranks with the same identity share memory. KAITIAN_HOST_ID; default: the hostname.
  public var hostIdentity: String
  public var transport: Transport
  /// Longest wait for any one call or for set-up, in seconds. KAITIAN_TIMEOUT.
  public var timeoutSeconds: Double
  /// Silence after which a peer is declared lost, in seconds; 0 disables heartbeats.
  /// KAITIAN_HEARTBEAT_TIMEOUT. Why 15 s: a cut link or frozen host closes no socket, so
  /// without heartbeats it is only found at `timeoutSeconds` (300 s). Heartbeats come from the
  /// watchdog thread, not the engine, so long compute or a long collective never delays them;
  /// only a stopped process, a frozen host or a lost network does. 15 s rides out scheduler
  /// stalls on an overloaded host and a few TCP retransmissions (about 3 s in all by default)
  /// yet finds a dead link 20 times sooner than the call timeout.
  public var heartbeatTimeoutSeconds: Double
  /// Address peers connect to: KAITIAN_SOCKET_ADDR, else the address of KAITIAN_SOCKET_IFNAME,
  /// else the caller's hint (the address the store was reached from), else 127.0.0.1.
  public var advertisedHost: String?
  /// Namespace of this communicator's keys in the store, so several can share one store.
  public var storePrefix: String
  /// How long the engine spins before it sleeps when a peer is late. KAITIAN_SPIN_US.
  public var spinMicroseconds: Int
  /// Messages at least this large use bandwidth-optimal (ring/chain) algorithms.
  /// KAITIAN_RING_THRESHOLD (bytes).
  public var ringThresholdBytes: Int
  /// Bytes of each shared-memory ring (one per direction of each pair on a host).
  /// KAITIAN_SHM_RING_BYTES.
  public var sharedMemoryRingBytes: Int
  /// Everything sent over TCP goes in records MAC'd under the connection's own keys from the
  /// handshake (`FrameIntegrity`), so that data changed on the network path fails the call
  /// instead of training on it. KAITIAN_INTEGRITY=1. Off by default, as in NCCL and Gloo: it
  /// costs bandwidth (measured in docs/BENCHMARKS-INTEGRITY.md). Every rank must set it alike;
  /// shared memory needs none.
  public var frameIntegrity: Bool
  /// Bytes per chunk of a hybrid allreduce's three-stage pipeline (`HybridPipeline`): smaller
  /// chunks overlap the stages sooner, larger ones pay each library's per-call cost less often.
  /// KAITIAN_HYBRID_CHUNK_BYTES, the Python backend's variable too.
  public var hybridChunkBytes: Int
  /// Large allreduces of ranks on several hosts, each with the same number of ranks, reduce
  /// inside the hosts first, exchange between them, and gather inside them again
  /// (`AllReduce.Algorithm.hierarchical`); off, they use the flat ring. KAITIAN_HIERARCHICAL=0
  /// turns it off, for comparison. Every rank must set it alike, as the ring threshold: ranks
  /// that chose different algorithms fail the allreduce as a mismatch that names them.
  public var hierarchicalAllReduce: Bool
  /// Bytes per segment of the hierarchical allreduce's pipeline (`HierarchicalAllReduce`):
  /// smaller segments start the exchange between hosts sooner and overlap more of it with the
  /// work inside the hosts; each costs one more round of steps. KAITIAN_HIERARCHICAL_SEGMENT_BYTES,
  /// 1 byte to 1 GiB (`maximumSegmentBytes`). Every rank must set it alike, or allreduces fail
  /// as a mismatch.
  public var hierarchicalSegmentBytes: Int
  /// The largest segment the hierarchical allreduce takes; larger values count as this.
  public static let maximumSegmentBytes = 1 << 30

  public init(
    hostIdentity: String = CommunicatorOptions.defaultHostIdentity(),
    transport: Transport = .auto, timeoutSeconds: Double = 300,
    heartbeatTimeoutSeconds: Double = 15, advertisedHost: String? = nil,
    storePrefix: String = "kaitian", spinMicroseconds: Int = 50,
    ringThresholdBytes: Int = 64 * 1024, sharedMemoryRingBytes: Int = 1 << 20,
    frameIntegrity: Bool = false, hybridChunkBytes: Int = 4 << 20,
    hierarchicalAllReduce: Bool = true, hierarchicalSegmentBytes: Int = 1 << 20
  ) {
    self.hostIdentity = hostIdentity
    self.transport = transport
    self.timeoutSeconds = timeoutSeconds
    self.heartbeatTimeoutSeconds = heartbeatTimeoutSeconds
    self.advertisedHost = advertisedHost
    self.storePrefix = storePrefix
    self.spinMicroseconds = spinMicroseconds
    self.ringThresholdBytes = ringThresholdBytes
    self.sharedMemoryRingBytes = sharedMemoryRingBytes
    self.frameIntegrity = frameIntegrity
    self.hybridChunkBytes = hybridChunkBytes
    self.hierarchicalAllReduce = hierarchicalAllReduce
    self.hierarchicalSegmentBytes = hierarchicalSegmentBytes
  }

  /// Defaults overridden by the KAITIAN_* environment variables; a malformed value is an error
  /// that names the variable.
  public static func fromEnvironment() throws(KaitianError) -> CommunicatorOptions {
    try from { EnvironmentVariable.value($0) }
  }

  /// Defaults overridden by the variables `value(name)` gives (the environment's, or a test's).
  static func from(
    _ value: (String) -> String?
  ) throws(KaitianError) -> CommunicatorOptions {
    var options = CommunicatorOptions()
    func number(
      _ name: String, _ fallback: Double, valid: (Double) -> Bool
    ) throws(KaitianError) -> Double {
      try Self.number(name, value(name), default: fallback, valid: valid)
    }
    if let value = value("KAITIAN_HOST_ID") { options.hostIdentity = value }
    if let value = value("KAITIAN_TRANSPORT") {
      guard let transport = Transport(rawValue: value.lowercased()) else {
        throw .invalidArgument("KAITIAN_TRANSPORT=\(value) is not one of auto, tcp, shm")
      }
      options.transport = transport
    }
    options.timeoutSeconds = try number("KAITIAN_TIMEOUT", options.timeoutSeconds) { $0 > 0 }
    options.heartbeatTimeoutSeconds = try number(
      "KAITIAN_HEARTBEAT_TIMEOUT", options.heartbeatTimeoutSeconds
    ) { $0 == 0 || $0 >= 0.1 }
    options.advertisedHost = value("KAITIAN_SOCKET_ADDR")
    options.spinMicroseconds = Int(
      try number("KAITIAN_SPIN_US", Double(options.spinMicroseconds)) { $0 >= 0 })
    options.ringThresholdBytes = Int(
      try number("KAITIAN_RING_THRESHOLD", Double(options.ringThresholdBytes)) {
        $0 >= 0
      })
    options.sharedMemoryRingBytes = Int(
      try number("KAITIAN_SHM_RING_BYTES", Double(options.sharedMemoryRingBytes)) {
        $0 >= 4096 && Int($0) % 8 == 0
      })
    options.hybridChunkBytes = Int(
      try number("KAITIAN_HYBRID_CHUNK_BYTES", Double(options.hybridChunkBytes)) {
        $0 >= 1 && $0 == $0.rounded()
      })
    if let value = value("KAITIAN_INTEGRITY") {
      options.frameIntegrity = try flag("KAITIAN_INTEGRITY", value)
    }
    if let value = value("KAITIAN_HIERARCHICAL") {
      options.hierarchicalAllReduce = try flag("KAITIAN_HIERARCHICAL", value)
    }
    options.hierarchicalSegmentBytes = Int(
      try number("KAITIAN_HIERARCHICAL_SEGMENT_BYTES", Double(options.hierarchicalSegmentBytes)) {
        $0 >= 1 && $0 <= Double(Self.maximumSegmentBytes) && $0 == $0.rounded()
      })
    return options
  }

  public static func defaultHostIdentity() -> String {
    var name = [UInt8](repeating: 0, count: 256)
    guard gethostname(&name, name.count - 1) == 0 else { return "localhost" }
    return String(decoding: name.prefix { $0 != 0 }, as: UTF8.self)
  }

  /// A switch's value: 1, on, true or yes, or 0, off, false or no.
  private static func flag(_ name: String, _ value: String) throws(KaitianError) -> Bool {
    switch value.lowercased() {
    case "1", "on", "true", "yes": return true
    case "0", "off", "false", "no": return false
    default: throw .invalidArgument("\(name)=\(value) is not 1 or 0")
    }
  }

  private static func number(
    _ name: String, _ text: String?, default value: Double, valid: (Double) -> Bool
  ) throws(KaitianError) -> Double {
    guard let text else { return value }
    guard let parsed = Double(text), valid(parsed) else {
      throw .invalidArgument("\(name)=\(text) is not a valid value")
    }
    return parsed
  }
}
