import Glibc
import KaitianPOSIX
import KaitianStore

/// Shared-memory links among the ranks of one host.
///
/// Each rank creates one segment: a page holding its doorbell, then one ring per local peer
/// that this rank writes and the peer reads. Every rank maps every local segment. Once all
/// peers report (through the store) that they mapped a segment, its creator unlinks the name.
enum SharedMemoryLinks {
  struct Established {
    var links: [(Int, ShmLink)]
    var doorbell: Doorbell
  }

  private static let headerBytes = 4096

  private static func ringStride(_ ringBytes: Int) -> Int {
    (ShmRing.headerBytes + ringBytes + 4095) & ~4095
  }

  private static func segmentSize(peers: Int, ringBytes: Int) -> Int {
    headerBytes + peers * ringStride(ringBytes)
  }

  /// `localRanks` lists every rank on this host, this one included.
  static func establish(
    store: any RendezvousStore, prefix: String, rank: Int, localRanks: [Int], ringBytes: Int,
    deadline: Deadline
  ) throws(KaitianError) -> Established {
    let ranks = localRanks.sorted()
    let size = segmentSize(peers: ranks.count - 1, ringBytes: ringBytes)
    let name =
      "/\(SharedMemorySegment.namePrefix)\(getpid())-\(rank)-\(UInt32.random(in: 0...UInt32.max))"
    let own = try SharedMemorySegment(creating: name, size: size)
    let timeout = deadline.remaining
    var segments: [Int: SharedMemorySegment] = [rank: own]
    do {
      try store.set(key: "\(prefix)/shm/\(rank)", value: Array(name.utf8))
      for peer in ranks where peer != rank {
        let peerName = String(
          decoding: try store.get(key: "\(prefix)/shm/\(peer)", timeout: timeout), as: UTF8.self)
        segments[peer] = try SharedMemorySegment(opening: peerName, size: size)
        try store.set(key: "\(prefix)/shm-mapped/\(peer)/\(rank)", value: [1])
      }
      try store.wait(
        keys: ranks.filter { $0 != rank }.map { "\(prefix)/shm-mapped/\(rank)/\($0)" },
        timeout: timeout)
    } catch let error as KaitianError {
      throw error
    } catch {
      throw KaitianError(
        .systemError, rank: rank, call: "communicator set-up",
        "shared-memory rendezvous failed: \(error)")
    }
    own.unlink()

    func ring(in owner: Int, toward reader: Int) -> ShmRing {
      let others = ranks.filter { $0 != owner }
      let index = others.firstIndex(of: reader)!
      let base = segments[owner]!.base + headerBytes + index * ringStride(ringBytes)
      return ShmRing(at: base, capacity: ringBytes)
    }
    let allSegments = Array(segments.values)
    let doorbell = Doorbell(at: own.base)
    let links = ranks.filter { $0 != rank }.map { peer in
      (
        peer,
        ShmLink(
          peer: peer, outgoing: ring(in: rank, toward: peer),
          incoming: ring(in: peer, toward: rank), ownDoorbell: doorbell,
          peerDoorbell: Doorbell(at: segments[peer]!.base), segments: allSegments)
      )
    }
    return Established(links: links, doorbell: doorbell)
  }
}
