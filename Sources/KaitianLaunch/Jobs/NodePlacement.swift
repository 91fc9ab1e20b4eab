import Foundation
import Glibc

/// Which node of how many this launcher is, where node 0 is, and the job's id: from the flags,
/// else from Slurm's variables when `srun` started this launcher, else a job on one host.
package struct NodePlacement: Equatable {
  package var nodeCount = 1
  package var nodeRank = 0
  /// Node 0's address, for the store and torch's MASTER_ADDR; 127.0.0.1 on one host.
  package var masterAddress = "127.0.0.1"
  /// From --job-id or the file, else Slurm's SLURM_JOB_ID as `slurm-<id>`.
  package var jobID: String?
  /// Where the values came from, for the job line: "flags" or "Slurm".
  package var source = "flags"

  /// `firstSlurmHost` runs `scontrol show hostnames $SLURM_JOB_NODELIST` and returns its first
  /// line, or nil when scontrol is not on PATH; it is called only when Slurm must name node 0.
  package static func resolve(
    nnodes: Int?, nodeRank: Int?, masterAddress: String?, jobID: String?,
    environment: [String: String], firstSlurmHost: () -> String?
  ) throws(UsageError) -> NodePlacement {
    var placement = NodePlacement(jobID: jobID)
    let slurmNodes = environment["SLURM_NNODES"].flatMap(Int.init)
    let slurmRank = environment["SLURM_NODEID"].flatMap(Int.init)
    let underSlurm = nnodes == nil && slurmNodes != nil
    if underSlurm, let slurmNodes {
      placement.source = "Slurm"
      placement.nodeCount = slurmNodes
      guard let slurmRank = nodeRank ?? slurmRank else {
        throw UsageError(
          "SLURM_NNODES=\(slurmNodes) is set but SLURM_NODEID is not: start kaitian run with "
            + "srun (one task per node) or give --node-rank")
      }
      placement.nodeRank = slurmRank
      if placement.jobID == nil, let id = environment["SLURM_JOB_ID"], !id.isEmpty {
        placement.jobID = "slurm-\(id)"
      }
    } else {
      placement.nodeCount = nnodes ?? 1
      guard placement.nodeCount >= 1 else {
        throw UsageError("--nnodes \(placement.nodeCount) must be at least 1")
      }
      if let nodeRank {
        placement.nodeRank = nodeRank
      } else if placement.nodeCount > 1 {
        throw UsageError(
          "--nnodes \(placement.nodeCount) needs --node-rank: 0 on the host that serves the "
            + "store, 1 to \(placement.nodeCount - 1) on the others")
      }
    }
    guard (0..<placement.nodeCount).contains(placement.nodeRank) else {
      throw UsageError(
        "node rank \(placement.nodeRank) is outside 0...\(placement.nodeCount - 1) "
          + "(\(placement.nodeCount) node\(placement.nodeCount == 1 ? "" : "s"))")
    }
    if let masterAddress {
      placement.masterAddress = masterAddress
    } else if placement.nodeCount > 1 {
      guard underSlurm else {
        throw UsageError(
          "--nnodes \(placement.nodeCount) needs --master-addr: node 0's address that every "
            + "node can reach (node 0 serves the store there)")
      }
      guard let host = firstSlurmHost(), !host.isEmpty else {
        throw UsageError(
          "under Slurm node 0's address comes from `scontrol show hostnames "
            + "$SLURM_JOB_NODELIST`, but scontrol is not on PATH or printed nothing: give "
            + "--master-addr")
      }
      placement.masterAddress = host
    }
    return placement
  }

  /// The first host of the Slurm allocation, or nil when scontrol is missing or fails.
  package static func firstSlurmHost(environment: [String: String]) -> String? {
    guard let scontrol = ExecutableSearch.find("scontrol"),
      let nodeList = environment["SLURM_JOB_NODELIST"] ?? environment["SLURM_NODELIST"]
    else { return nil }
    guard
      case .success(let text) = ToolOutput.run(
        scontrol, arguments: ["show", "hostnames", nodeList], timeoutSeconds: 10)
    else { return nil }
    return text.split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) }
  }

  /// KAITIAN_HOST_ID for the workers of several nodes: the launcher's own value if it has
  /// one, else the host name and node rank (hosts in network namespaces or containers often
  /// share a host name, and equal ids would make the engine try shared memory between them).
  package func hostID(environment: [String: String]) -> String? {
    guard nodeCount > 1 else { return nil }
    if let own = environment["KAITIAN_HOST_ID"], !own.isEmpty { return own }
    var name = [CChar](repeating: 0, count: 256)
    gethostname(&name, name.count - 1)
    let bytes = name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return "\(String(decoding: bytes, as: UTF8.self))-node\(nodeRank)"
  }
}
