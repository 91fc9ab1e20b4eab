/// Which ranks share a host, when every host has the same number of them (at least 2) and there
/// are at least 2 hosts: the shape the hierarchical allreduce needs.
///
/// Why equal hosts only: the hierarchical allreduce pairs each host's i-th rank with the i-th
/// rank of every other host; with unequal hosts some ranks would have no partner, and the flat
/// ring, which needs no shape, serves those jobs. Every rank derives the layout from the same
/// endpoints (their host identities, exchanged through the store), so all ranks agree on it.
struct HostLayout: Sendable, Equatable {
  /// The ranks of each host in ascending order; hosts in the order of their lowest rank.
  let hosts: [[Int]]

  /// nil when the ranks are on one host, when some host has a single rank, or when the hosts
  /// hold different numbers of ranks. `identities[r]` is rank r's host identity.
  init?(identities: [String]) {
    var order: [String] = []
    var members: [String: [Int]] = [:]
    for (rank, identity) in identities.enumerated() {
      if members[identity] == nil { order.append(identity) }
      members[identity, default: []].append(rank)
    }
    let hosts = order.map { members[$0]! }
    guard hosts.count >= 2, let perHost = hosts.first?.count, perHost >= 2,
      hosts.allSatisfy({ $0.count == perHost })
    else { return nil }
    self.hosts = hosts
  }

  /// The ranks on `rank`'s host, as a ring.
  func hostRing(of rank: Int) -> RingMembers {
    let (host, local) = place(of: rank)
    return RingMembers(ranks: hosts[host], position: local)
  }

  /// The ranks with `rank`'s place on their own hosts, one per host, as a ring.
  func columnRing(of rank: Int) -> RingMembers {
    let (host, local) = place(of: rank)
    return RingMembers(ranks: hosts.map { $0[local] }, position: host)
  }

  /// `rank`'s host and its index among that host's ranks.
  private func place(of rank: Int) -> (host: Int, local: Int) {
    for (host, ranks) in hosts.enumerated() {
      if let local = ranks.firstIndex(of: rank) { return (host, local) }
    }
    preconditionFailure("rank \(rank) is on none of the layout's hosts")
  }
}
