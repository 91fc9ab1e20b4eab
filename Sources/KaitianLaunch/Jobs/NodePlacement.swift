import ArgumentParser
import Foundation
import KaitianLaunch

/// Which node of how many this launcher is, where node 0 is, and the job's id: from the flags,
/// else from Slurm's variables when `srun` started this launcher, else a job on one host.
struct NodePlacement: Equatable {
  var nodeCount = 1
  var nodeRank = 0
  /// Node 0's address, for the store and torch's MASTER_ADDR; 127.0.0.1 on one host.
  var masterAddress = "127.0.0.1"
  /// From --job-id or the file, else Slurm's SLURM_JOB_ID as `slurm-<id>`.
  var jobID: String?
  /// Where the values came from, for the job line: "flags" or "Slurm".
  var source = "flags"

  /// `firstSlurmHost` runs `scontrol show hostnames $SLURM_JOB_NODELIST` and returns its first
  /// line, or nil when scontrol is not on PATH; it is called only when Slurm must name node 0.
  static func resolve(
    nnodes: Int?, nodeRank: Int?, masterAddress: String?, jobID: String?,
    environment: [String: String], firstSlurmHost: () -> String?
  ) throws(ValidationError) -> NodePlacement {
    var placement = NodePlacement(jobID: jobID)
    let slurmNodes = environment["SLURM_NNODES"].flatMap(Int.init)
    let slurmRank = environment["SLURM_NODEID"].flatMap(Int.init)
    let underSlurm = nnodes == nil && slurmNodes != nil
    if underSlurm, let slurmNodes {
      placement.source = "Slurm"
      placement.nodeCount = slurmNodes
      guard let slurmRank = nodeRank ?? slurmRank else {
        throw ValidationError(
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
        throw ValidationError("--nnodes \(placement.nodeCount) must be at least 1")
      }
      if let nodeRank {
        placement.nodeRank = nodeRank
      } else if placement.nodeCount > 1 {
        throw ValidationError(
          "--nnodes \(placement.nodeCount) needs --node-rank: 0 on the host that serves the "
            + "store, 1 to \(placement.nodeCount - 1) on the others")
      }
    }
    guard (0..<placement.nodeCount).contains(placement.nodeRank) else {
      throw ValidationError(
        "node rank \(placement.nodeRank) is outside 0...\(placement.nodeCount - 1) "
          + "(\(placement.nodeCount) node\(placement.nodeCount == 1 ? "" : "s"))")
    }
    if let masterAddress {
      placement.masterAddress = masterAddress
    } else if placement.nodeCount > 1 {
      guard underSlurm else {
        throw ValidationError(
          "--nnodes \(placement.nodeCount) needs --master-addr: node 0's address that every "
            + "node can reach (node 0 serves the store there)")
      }
      guard let host = firstSlurmHost(), !host.isEmpty else {
        throw ValidationError(
          "under Slurm node 0's address comes from `scontrol show hostnames "
            + "$SLURM_JOB_NODELIST`, but scontrol is not on PATH or printed nothing: give "
            + "--master-addr")
      }
      placement.masterAddress = host
    }
    return placement
  }

  /// The first host of the Slurm allocation, or nil when scontrol is missing or fails.
  static func firstSlurmHost(environment: [String: String]) -> String? {
    guard let scontrol = ExecutableSearch.find("scontrol"),
      let nodeList = environment["SLURM_JOB_NODELIST"] ?? environment["SLURM_NODELIST"]
    else { return nil }
    guard
      case .success(let text) = ToolOutput.run(
        scontrol, arguments: ["show", "hostnames", nodeList], timeoutSeconds: 10)
    else { return nil }
    return text.split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) }
  }
}
