import KaitianStore

/// What a rank declares about itself so the job can be split into device groups.
///
/// Ranks with the same `deviceKind` on the same `host` can use one vendor library between
/// them (NCCL among CUDA GPUs of one machine, CNCL among MLUs, ...); ranks that differ in
/// either cannot, and meet in host memory instead.
public struct RankIdentity: Sendable, Hashable, CustomStringConvertible {
  /// The device this rank drives: "cpu", "cuda", "mlu", "rocm", "npu", "xpu", or any label.
  public var deviceKind: String
  /// Ranks with equal hosts share memory. Usually the same value as
  /// `CommunicatorOptions.hostIdentity` (KAITIAN_HOST_ID, else the host name).
  public var host: String

  public init(deviceKind: String, host: String) {
    self.deviceKind = deviceKind
    self.host = host
  }

  public var description: String { "\(deviceKind) on \(host)" }

  /// Kind and host separated by a NUL byte, which neither may contain.
  var encoded: [UInt8] { Array(deviceKind.utf8) + [0] + Array(host.utf8) }

  init?(decoding bytes: [UInt8]) {
    guard let separator = bytes.firstIndex(of: 0) else { return nil }
    self.init(
      deviceKind: String(decoding: bytes[..<separator], as: UTF8.self),
      host: String(decoding: bytes[(separator + 1)...], as: UTF8.self))
  }
}

/// The device groups of a job and one rank's place in them, computed the same way as
/// python/kaitian/topology.py so Swift and Python ranks agree on every role.
///
/// Groups are the ranks with equal identities, in ascending rank order, and are numbered by
/// their lowest rank. Why that order: it depends only on the declarations, never on which rank
/// published first, so every rank derives the same groups, local ranks and shard columns
/// without a further round of agreement.
public struct Topology: Sendable, Equatable {
  /// One intra-group: ranks of one device kind on one host.
  public struct Group: Sendable, Equatable {
    /// Position among the groups (ordered by lowest global rank).
    public let index: Int
    public let identity: RankIdentity
    /// Global ranks, ascending; a rank's local rank is its position here.
    public let ranks: [Int]

    public var size: Int { ranks.count }
  }

  /// The rank this topology was computed for.
  public let rank: Int
  public let groups: [Group]
  /// Which group each global rank is in.
  private let groupOfRank: [Int]

  /// Groups from every rank's identity (`identities[r]` is rank r's).
  public init(rank: Int, identities: [RankIdentity]) {
    precondition(identities.indices.contains(rank), "rank \(rank) has no identity")
    var members: [RankIdentity: [Int]] = [:]
    var firstSeen: [RankIdentity] = []
    for (r, identity) in identities.enumerated() {
      if members[identity] == nil { firstSeen.append(identity) }
      members[identity, default: []].append(r)
    }
    // Identities first seen in rank order are already ordered by their lowest rank.
    groups = firstSeen.enumerated().map { index, identity in
      Group(index: index, identity: identity, ranks: members[identity]!)
    }
    var groupOfRank = Array(repeating: 0, count: identities.count)
    for group in groups {
      for r in group.ranks { groupOfRank[r] = group.index }
    }
    self.rank = rank
    self.groupOfRank = groupOfRank
  }

  public var worldSize: Int { groupOfRank.count }

  /// This rank's group.
  public var group: Group { groups[groupOfRank[rank]] }

  /// This rank's position in its group.
  public var localRank: Int { group.ranks.firstIndex(of: rank)! }

  /// How many shards cross between groups in parallel: the smallest group's size. With equal
  /// sizes every local rank carries one shard; otherwise local ranks 0..<columns do.
  public var columns: Int { groups.map(\.size).min()! }

  public var hasEqualGroupSizes: Bool { Set(groups.map(\.size)).count == 1 }

  /// Global ranks of shard column `column`: local rank `column` of every group, in group order.
  public func columnRanks(_ column: Int) -> [Int] { groups.map { $0.ranks[column] } }

  /// Publishes `identity` under `prefix` in the store, reads every rank's, and builds the
  /// topology. Blocks until all `size` ranks have published or `timeout` passes.
  static func exchange(
    store: any RendezvousStore, prefix: String, rank: Int, size: Int, identity: RankIdentity,
    timeout: Duration
  ) throws(KaitianError) -> Topology {
    let setUp = "hybrid communicator set-up"
    for (field, value) in [("device kind", identity.deviceKind), ("host", identity.host)]
    where value.isEmpty || value.utf8.contains(0) {
      throw KaitianError(
        .invalidArgument, rank: rank, call: setUp,
        "the \(field) '\(value)' must be non-empty and free of NUL bytes")
    }
    var identities: [RankIdentity] = []
    do {
      try store.set(key: "\(prefix)/topology/\(rank)", value: identity.encoded)
      for peer in 0..<size {
        let bytes = try store.get(key: "\(prefix)/topology/\(peer)", timeout: timeout)
        guard let declared = RankIdentity(decoding: bytes) else {
          throw KaitianError(
            .systemError, rank: rank, call: setUp,
            "rank \(peer) published a malformed identity under \(prefix)/topology")
        }
        identities.append(declared)
      }
    } catch let error as StoreError {
      throw KaitianError(
        .systemError, rank: rank, call: setUp,
        "exchanging device identities through the store failed: \(error); check that all "
          + "\(size) ranks started with the same store, world size and prefix")
    } catch let error as KaitianError {
      throw error
    } catch {
      throw KaitianError(.systemError, rank: rank, call: setUp, "\(error)")
    }
    return Topology(rank: rank, identities: identities)
  }
}
