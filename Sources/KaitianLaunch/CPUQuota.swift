import Glibc
import KaitianPOSIX

/// CPU quotas for a job's workers as real cgroups, so that ranks of unequal speed can be made
/// on one machine: a worker limited to 0.3 CPU runs about a third as fast as one with a full
/// CPU, whatever else the machine does.
///
/// One cgroup per rank under `kaitian-<job>` at the top of the CPU hierarchy. cgroup v2 when
/// the unified hierarchy offers the cpu controller (cpu.max), otherwise the v1 cpu controller
/// (cpu.cfs_quota_us), which hybrid systems such as Debian's older kernels and many VMs mount.
/// Workers enter their cgroup themselves before running the command (see `entryScript`), so
/// no work escapes the quota.
public final class CPUQuotaCgroups {
  public enum Version: Sendable { case v2, v1 }

  public let version: Version
  /// The job's cgroup directory.
  public let jobDirectory: String
  private var rankDirectories: [String] = []

  /// The period the quotas are a share of: 10 ms, not the kernel's default 100 ms. Why: with
  /// 100 ms a worker at 0.3 CPU runs flat out for 30 ms and then stops for 70 ms, so a training
  /// step of a few tens of milliseconds takes either its compute time or 70 ms more: a
  /// stop-and-go device, not a slower one. A 10 ms period spreads the quota finely enough
  /// that the worker behaves like a uniformly slower device, which is what a slower
  /// accelerator is. Quotas too small for 1 ms per 10 ms get a longer period (`period(for:)`).
  static let periodMicroseconds = 10_000

  /// The kernel refuses quotas below 1 ms per period.
  static let minimumQuotaMicroseconds = 1_000

  /// The period for a worker of `cpus` CPUs: the default, or long enough that its quota is at
  /// least the kernel's minimum.
  static func period(for cpus: Double) -> Int {
    max(periodMicroseconds, Int((Double(minimumQuotaMicroseconds) / cpus).rounded(.up)))
  }

  /// Finds a writable cpu controller and creates the job's cgroup.
  public init(job: String, root: String = "/sys/fs/cgroup") throws(LaunchError) {
    let advice =
      "CPU quotas (cpu= in --group) need write access to cgroups: run as root, or drop cpu="
    if Self.readText("\(root)/cgroup.controllers")?.split(separator: " ").contains("cpu") == true {
      version = .v2
      jobDirectory = "\(root)/kaitian-\(job)"
      // The cpu controller must be enabled for the children of every level down to the ranks.
      if Self.readText("\(root)/cgroup.subtree_control")?.split(separator: " ").contains("cpu")
        != true
      {
        try Self.write("+cpu", to: "\(root)/cgroup.subtree_control", advice: advice)
      }
      try Self.makeDirectory(jobDirectory, advice: advice)
      try Self.write("+cpu", to: "\(jobDirectory)/cgroup.subtree_control", advice: advice)
    } else if let v1 = ["\(root)/cpu", "\(root)/cpu,cpuacct"].first(where: {
      access("\($0)/cpu.cfs_quota_us", F_OK) == 0
    }) {
      version = .v1
      jobDirectory = "\(v1)/kaitian-\(job)"
      try Self.makeDirectory(jobDirectory, advice: advice)
    } else {
      throw LaunchError(
        "no cgroup cpu controller found (neither cpu in \(root)/cgroup.controllers nor "
          + "\(root)/cpu/cpu.cfs_quota_us); drop cpu= from --group to run without CPU quotas")
    }
  }

  /// Creates rank `rank`'s cgroup limited to `cpus` CPUs; returns the file a process writes
  /// its pid to in order to enter it.
  public func addRank(_ rank: Int, cpus: Double) throws(LaunchError) -> String {
    let directory = "\(jobDirectory)/rank-\(rank)"
    let advice = "cannot set the CPU quota of rank \(rank)"
    try Self.makeDirectory(directory, advice: advice)
    rankDirectories.append(directory)
    let period = Self.period(for: cpus)
    let quota = max(Self.minimumQuotaMicroseconds, Int((cpus * Double(period)).rounded()))
    switch version {
    case .v2:
      try Self.write("\(quota) \(period)", to: "\(directory)/cpu.max", advice: advice)
    case .v1:
      try Self.write("\(period)", to: "\(directory)/cpu.cfs_period_us", advice: advice)
      try Self.write("\(quota)", to: "\(directory)/cpu.cfs_quota_us", advice: advice)
    }
    return "\(directory)/cgroup.procs"
  }

  /// Kills anything still inside the job's cgroups and removes them. A cgroup can be removed
  /// only once empty, and killed processes take a moment to leave, so this retries for a
  /// second.
  public func remove() {
    let end = LocalProcessGroup.now() + 1
    for directory in rankDirectories.reversed() + [jobDirectory] {
      while rmdir(directory) != 0 && errno != ENOENT && LocalProcessGroup.now() < end {
        for pid in (Self.readText("\(directory)/cgroup.procs") ?? "").split(separator: "\n") {
          if let pid = pid_t(pid) { kill(pid, SIGKILL) }
        }
        usleep(10_000)
      }
    }
    rankDirectories = []
  }

  /// The shell script that moves its own process into the cgroup and then execs the command
  /// (its positional parameters): `/bin/sh -c SCRIPT kaitian-worker COMMAND...`.
  public static func entryScript(procsFile: String) -> String {
    "echo $$ > '\(procsFile)' && exec \"$@\""
  }

  private static func makeDirectory(_ path: String, advice: String) throws(LaunchError) {
    guard mkdir(path, 0o755) == 0 || errno == EEXIST else {
      throw LaunchError(
        "cannot create the cgroup \(path): \(errnoText(errno)); \(advice)")
    }
  }

  private static func write(_ text: String, to path: String, advice: String) throws(LaunchError) {
    let (fd, openError) = retryingInterrupts { open(path, O_WRONLY | O_CLOEXEC) }
    if let openError {
      throw LaunchError("cannot open \(path): \(errnoText(openError)); \(advice)")
    }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    if let error = bytes.withUnsafeBytes({ writeFully(fd, $0) }) {
      throw LaunchError("cannot write '\(text)' to \(path): \(errnoText(error)); \(advice)")
    }
  }

  static func readText(_ path: String) -> String? {
    guard let bytes = try? TextFile.read(path) else { return nil }
    return String(decoding: bytes, as: UTF8.self).trimmingTrailingNewlines()
  }
}

extension String {
  fileprivate func trimmingTrailingNewlines() -> String {
    var text = self
    while text.last == "\n" { text.removeLast() }
    return text
  }
}
