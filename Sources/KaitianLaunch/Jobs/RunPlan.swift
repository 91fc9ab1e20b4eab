import Foundation
import Glibc
import KaitianAuth
import KaitianOutput

/// One group of workers: COUNT workers of one device kind with the same limits, devices,
/// launch prefix and environment. Made from a `--group` flag or a job file's `[[group]]`.
package struct GroupSpec: Equatable {
  package var kind: String
  package var count: Int
  /// CPU quota per worker, in CPUs (0.3 = 30 ms of every 100 ms).
  package var cpuFraction: Double?
  /// CPUs the workers may run on, as taskset reads them (sched_setaffinity): "0-1,3".
  package var cpuList: String?
  /// EMULATION: the workers pace their model's compute to a device this fast relative to one
  /// host core (0.25 = four times slower), with their host threads left free, as beside a real
  /// accelerator; passed as KAITIAN_EMULATED_SPEED, read by `kaitian.emulate_device`.
  package var emulatedSpeed: Double?
  /// Accelerator ids the whole group sees, through the kind's visibility variable.
  package var devices: [Int]?
  /// Words before the command: `conda run -n env`, `docker run --rm img`.
  package var prefix: [String] = []
  /// The group's own command instead of the job's (job files only).
  package var command: [String]?
  /// Variables for this group's workers, over the job's (job files only).
  package var environment: [String: String] = [:]

  /// What is wrong with a group, and which of its settings (`cpu`, `devices`...) is at fault,
  /// so that a flag and a job file can each say where it was given.
  package struct Problem: Error {
    package var key: String?
    package var message: String
  }

  /// The variable this group's vendor runtime reads to decide which devices a process sees.
  package var visibilityVariable: String? { DeviceKind.named(kind)?.visibilityVariable }

  /// Checks every setting; `hostCPUs` bounds cpus= lists.
  package init(
    kind: String, count: Int, cpuFraction: Double? = nil, cpuList: String? = nil,
    devices: [Int]? = nil, emulatedSpeed: Double? = nil, hostCPUs: Int
  ) throws(Problem) {
    guard Self.isValidKind(kind) else {
      throw Problem(
        key: "kind",
        message:
          "unknown device kind '\(kind)'; use "
          + "\(DeviceKind.all.map(\.name).joined(separator: ", ")) or a label of lowercase "
          + "letters, digits, - and _ that starts with a letter (cpu-slow)")
    }
    guard count >= 1 else {
      throw Problem(
        key: "count", message: "the worker count '\(count)' must be a whole number of at least 1")
    }
    self.kind = kind
    self.count = count
    if let cpuFraction {
      guard cpuFraction > 0, cpuFraction <= 64 else {
        throw Problem(
          key: "cpu",
          message:
            "cpu=\(RunPlan.format(cpuFraction)) must be a number of CPUs per worker in (0, 64], "
            + "e.g. cpu=0.5")
      }
      self.cpuFraction = cpuFraction
    }
    if let emulatedSpeed {
      guard emulatedSpeed > 0, emulatedSpeed <= 1 else {
        throw Problem(
          key: "speed",
          message:
            "speed=\(RunPlan.format(emulatedSpeed)) must be an emulated device speed in (0, 1] "
            + "relative to one host core, e.g. speed=0.25")
      }
      self.emulatedSpeed = emulatedSpeed
    }
    if let cpuList {
      guard let list = Self.parseList(cpuList, ranges: true), !list.isEmpty else {
        throw Problem(
          key: "cpus", message: "cpus=\(cpuList) must list CPU numbers and ranges, e.g. cpus=0-1,3")
      }
      if let beyond = list.first(where: { $0 >= hostCPUs }) {
        throw Problem(
          key: "cpus",
          message: "cpus= names CPU \(beyond) but this host has CPUs 0-\(hostCPUs - 1)")
      }
      self.cpuList = cpuList
    }
    if let devices {
      guard !devices.isEmpty, devices.allSatisfy({ $0 >= 0 }), Set(devices).count == devices.count
      else {
        throw Problem(
          key: "devices",
          message:
            "devices=\(devices.map(String.init).joined(separator: ",")) must list distinct device "
            + "ids, e.g. devices=0,1")
      }
      guard visibilityVariable != nil else {
        throw Problem(
          key: "devices",
          message:
            "devices= needs a kind whose runtime reads a visibility variable "
            + "(\(DeviceKind.acceleratorNames.joined(separator: ", "))), not \(kind)")
      }
      guard devices.count >= count else {
        throw Problem(
          key: "devices",
          message:
            "\(count) workers but devices= lists only \(devices.count); give each worker a device")
      }
      self.devices = devices
    }
  }

  /// Parses one --group value; `hostCPUs` bounds cpus= lists.
  package init(parsing text: String, hostCPUs: Int) throws(UsageError) {
    let fail = { (problem: String) in UsageError("--group \(text): \(problem)") }
    let fields = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
    guard fields.count >= 2 else {
      throw fail(
        "expected KIND:COUNT[:cpu=FRACTION][:cpus=LIST][:devices=LIST][:speed=F], e.g. cuda:2")
    }
    var values: [String: String] = [:]
    for field in fields.dropFirst(2) {
      guard let equals = field.firstIndex(of: "="), equals != field.startIndex else {
        throw fail("'\(field)' is not KEY=VALUE; keys are cpu, cpus, devices and speed")
      }
      let key = String(field[..<equals])
      guard ["cpu", "cpus", "devices", "speed"].contains(key) else {
        throw fail("unknown key '\(key)'; keys are cpu, cpus, devices and speed")
      }
      guard values[key] == nil else { throw fail("\(key)= is given twice") }
      values[key] = String(field[field.index(after: equals)...])
    }
    var fraction: Double?
    if let text = values["cpu"] {
      guard let number = Double(text) else {
        throw fail("cpu=\(text) must be a number of CPUs per worker in (0, 64], e.g. cpu=0.5")
      }
      fraction = number
    }
    var speed: Double?
    if let text = values["speed"] {
      guard let number = Double(text) else {
        throw fail("speed=\(text) must be an emulated device speed in (0, 1], e.g. speed=0.25")
      }
      speed = number
    }
    var devices: [Int]?
    if let text = values["devices"] {
      guard let list = Self.parseList(text, ranges: false) else {
        throw fail("devices=\(text) must list distinct device ids, e.g. devices=0,1")
      }
      devices = list
    }
    do {
      try self.init(
        kind: fields[0], count: Int(fields[1]) ?? 0, cpuFraction: fraction,
        cpuList: values["cpus"], devices: devices, emulatedSpeed: speed, hostCPUs: hostCPUs)
    } catch {
      // The count as typed, not as parsed: "two" is not 0.
      if error.key == "count" {
        throw fail("the worker count '\(fields[1])' must be a whole number of at least 1")
      }
      throw fail(error.message)
    }
  }

  package static func isValidKind(_ kind: String) -> Bool {
    guard let first = kind.unicodeScalars.first, ("a"..."z").contains(first) else { return false }
    return kind.unicodeScalars.allSatisfy {
      ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" || $0 == "_"
    }
  }

  /// "0,2" or, with ranges, "0-3,6"; nil when malformed.
  private static func parseList(_ text: String, ranges: Bool) -> [Int]? {
    var result: [Int] = []
    for item in text.split(separator: ",", omittingEmptySubsequences: false) {
      let bounds = item.split(separator: "-", omittingEmptySubsequences: false)
      if bounds.count == 1, let value = Int(bounds[0]), value >= 0 {
        result.append(value)
      } else if ranges, bounds.count == 2, let low = Int(bounds[0]), let high = Int(bounds[1]),
        low >= 0, low <= high
      {
        result += Array(low...high)
      } else {
        return nil
      }
    }
    return result
  }
}

/// Splits a launch prefix such as `conda run -n "my env"` into words as a POSIX shell would
/// (quotes and backslashes), without running a shell: no variables, globs or substitutions.
package enum ShellWords {
  package static func split(_ text: String) throws(UsageError) -> [String] {
    var words: [String] = []
    var current = ""
    var inWord = false
    var quote: Character?
    var escaped = false
    for character in text {
      if escaped {
        current.append(character)
        escaped = false
      } else if let open = quote {
        if character == open {
          quote = nil
        } else if character == "\\" && open == "\"" {
          escaped = true
        } else {
          current.append(character)
        }
      } else if character == "'" || character == "\"" {
        quote = character
        inWord = true
      } else if character == "\\" {
        escaped = true
        inWord = true
      } else if character.isWhitespace {
        if inWord { words.append(current) }
        current = ""
        inWord = false
      } else {
        current.append(character)
        inWord = true
      }
    }
    guard quote == nil, !escaped else {
      throw UsageError("unterminated quote or trailing backslash in '\(text)'")
    }
    if inWord { words.append(current) }
    return words
  }
}

/// Everything `kaitian run` decides before starting anything: one entry per rank with its
/// command line and environment. `--dry-run` prints it.
package struct RunPlan {
  package struct Rank {
    package var rank: Int
    package var group: Int
    package var groupRank: Int
    package var kind: String
    package var cpuFraction: Double?
    package var cpuList: String?
    package var emulatedSpeed: Double?
    /// The launch prefix, affinity wrapper and user command, without the cgroup entry
    /// wrapper (which needs the cgroup path known only at start).
    package var command: [String]
    package var environment: [(String, String)]
    package var logPath: String
    package var label: String { "rank \(rank) \(kind)" }
  }

  package var jobID: String
  package var logDirectory: String
  package var layout: NodeLayout
  package var ranks: [Rank]
  package var needsCgroups: Bool { ranks.contains { $0.cpuFraction != nil } }

  /// Placeholders the dry run shows for values chosen at start.
  package static let pendingStore = "127.0.0.1:<free port>"
  package static let pendingPort = "<free port>"

  /// The variables `kaitian run` sets for every worker (the vendor visibility variables are
  /// set only with devices=): a job file's env may not set them.
  package static let launcherVariables: Set<String> = [
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "KAITIAN_DEVICE_KIND", "KAITIAN_GROUP", "KAITIAN_GROUP_RANK", "KAITIAN_GROUP_SIZE",
    "KAITIAN_STORE", "KAITIAN_TOKEN", "KAITIAN_JOB_ID", "KAITIAN_NODE_RANK", "KAITIAN_NNODES",
    "KAITIAN_HOST_ID", "KAITIAN_EMULATED_SPEED",
  ]

  /// `store`, `masterAddress` and `masterPort` are filled in at start; a dry run passes
  /// placeholders. The token is added at start only, so that it never appears in a printed
  /// plan. Each group runs its own command if it has one, else `command`; `environment` is
  /// the job's, under each group's own.
  package init(
    groups: [GroupSpec], command: [String], environment: [String: String] = [:], jobID: String,
    logDirectory: String, store: String, masterAddress: String = "127.0.0.1",
    masterPort: String, taskset: String, layout: NodeLayout? = nil
  ) {
    self.jobID = jobID
    self.logDirectory = logDirectory
    let layout = layout ?? NodeLayout(worldSize: groups.reduce(0) { $0 + $1.count })
    self.layout = layout
    let localSize = groups.reduce(0) { $0 + $1.count }
    ranks = []
    for (localGroup, group) in groups.enumerated() {
      let groupIndex = layout.firstGroup + localGroup
      for groupRank in 0..<group.count {
        let localRank = ranks.count
        let rank = layout.firstRank + localRank
        var variables: [(String, String)] = [
          ("RANK", "\(rank)"), ("WORLD_SIZE", "\(layout.worldSize)"),
          ("LOCAL_RANK", "\(localRank)"), ("LOCAL_WORLD_SIZE", "\(localSize)"),
          ("MASTER_ADDR", masterAddress), ("MASTER_PORT", masterPort),
          ("KAITIAN_DEVICE_KIND", group.kind), ("KAITIAN_GROUP", "\(groupIndex)"),
          ("KAITIAN_GROUP_RANK", "\(groupRank)"), ("KAITIAN_GROUP_SIZE", "\(group.count)"),
          ("KAITIAN_STORE", store), ("KAITIAN_JOB_ID", jobID),
        ]
        if layout.nodeCount > 1 {
          variables += [
            ("KAITIAN_NODE_RANK", "\(layout.nodeRank)"), ("KAITIAN_NNODES", "\(layout.nodeCount)"),
          ]
        }
        if let hostID = layout.hostID { variables.append(("KAITIAN_HOST_ID", hostID)) }
        let own = environment.merging(group.environment) { _, groupValue in groupValue }
        if let address = layout.socketAddress, own["KAITIAN_SOCKET_ADDR"] == nil,
          own["KAITIAN_SOCKET_IFNAME"] == nil
        {
          variables.append(("KAITIAN_SOCKET_ADDR", address))
        }
        if let speed = group.emulatedSpeed {
          variables.append(("KAITIAN_EMULATED_SPEED", RunPlan.format(speed)))
        }
        if let devices = group.devices, let variable = group.visibilityVariable {
          variables.append((variable, devices.map(String.init).joined(separator: ",")))
        }
        variables += own.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        let affinity = group.cpuList.map { [taskset, "-c", $0] } ?? []
        ranks.append(
          Rank(
            rank: rank, group: groupIndex, groupRank: groupRank, kind: group.kind,
            cpuFraction: group.cpuFraction, cpuList: group.cpuList,
            emulatedSpeed: group.emulatedSpeed,
            command: affinity + group.prefix + (group.command ?? command),
            environment: variables, logPath: "\(logDirectory)/rank-\(rank).log"))
      }
    }
  }

  /// Why `id` cannot be a job id, or nil when it can: it names the log directory and the
  /// job's keys in a store, so it is kept to characters every path and key takes.
  package static func jobIDProblem(_ id: String) -> String? {
    let valid =
      !id.isEmpty && id.count <= 64
      && id.unicodeScalars.allSatisfy {
        ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
          || $0 == "-" || $0 == "_"
      }
    return valid ? nil : "use 1 to 64 letters, digits, - and _"
  }

  /// One process per rank for `LocalProcessGroup`: its command (entering its cgroup first when
  /// it has a CPU quota), its environment with the job token, its output under its label.
  package func processes(
    token: JobToken, cgroups: CPUQuotaCgroups?
  ) throws(LaunchError) -> [LocalProcessGroup.Member] {
    var members: [LocalProcessGroup.Member] = []
    for rank in ranks {
      var commandLine = rank.command
      if let cgroups, let fraction = rank.cpuFraction {
        let procs = try cgroups.addRank(rank.rank, cpus: fraction)
        commandLine =
          ["/bin/sh", "-c", CPUQuotaCgroups.entryScript(procsFile: procs), "kaitian-worker"]
          + commandLine
      }
      var environment = Dictionary(uniqueKeysWithValues: rank.environment)
      environment[JobToken.environmentVariable] = token.stringValue
      members.append(
        LocalProcessGroup.Member(
          name: rank.label, executable: commandLine[0], arguments: Array(commandLine.dropFirst()),
          environment: environment,
          output: .init(prefix: "[\(rank.label)] ", logPath: rank.logPath)))
    }
    return members
  }

  /// The plan as text: one block per rank.
  package func describe() -> String {
    let node =
      layout.nodeCount > 1 ? "node \(layout.nodeRank) of \(layout.nodeCount), " : ""
    var lines = ["job \(jobID): \(node)\(ranks.count) ranks, logs in \(logDirectory)"]
    for rank in ranks {
      let quota = rank.cpuFraction.map { "cpu quota \(RunPlan.format($0)) CPU" } ?? "no cpu quota"
      let affinity = rank.cpuList.map { ", cpus \($0)" } ?? ""
      let speed = rank.emulatedSpeed.map { ", EMULATED device speed \(RunPlan.format($0))" } ?? ""
      lines.append("\(rank.label) (group \(rank.group)): \(quota)\(affinity)\(speed)")
      lines.append("  command: \(rank.command.map(RunPlan.shellQuoted).joined(separator: " "))")
      for (key, value) in rank.environment { lines.append("  \(key)=\(value)") }
    }
    return lines.joined(separator: "\n")
  }

  /// The plan as one JSON document.
  package func json() -> String {
    let ranks = ranks.map { rank in
      JSON.object([
        ("rank", .number(Double(rank.rank))), ("group", .number(Double(rank.group))),
        ("group_rank", .number(Double(rank.groupRank))), ("kind", .string(rank.kind)),
        ("cpu_quota", rank.cpuFraction.map(JSON.number) ?? .null),
        ("cpus", rank.cpuList.map(JSON.string) ?? .null),
        ("emulated_speed", rank.emulatedSpeed.map(JSON.number) ?? .null),
        ("command", .array(rank.command.map(JSON.string))),
        ("environment", .object(rank.environment.map { ($0.0, .string($0.1)) })),
        ("log", .string(rank.logPath)),
      ])
    }
    return JSON.object([
      ("job_id", .string(jobID)), ("log_dir", .string(logDirectory)),
      ("node_rank", .number(Double(layout.nodeRank))),
      ("nnodes", .number(Double(layout.nodeCount))),
      ("world_size", .number(Double(layout.worldSize))), ("ranks", .array(ranks)),
    ]).rendered
  }

  package static func format(_ value: Double) -> String {
    value == value.rounded() && abs(value) < 1e15 ? "\(Int(value))" : "\(value)"
  }

  /// A word as a shell would need it to stay one word.
  package static func shellQuoted(_ word: String) -> String {
    let plain =
      !word.isEmpty
      && word.unicodeScalars.allSatisfy {
        ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
          || "-_./=:,+@%".unicodeScalars.contains($0)
      }
    return plain ? word : "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
  }
}

/// Where one host's workers sit in the whole job. One host: everything starts at 0. Several:
/// ranks and group indices are numbered node by node (all of node 0's groups first), group by
/// group inside a node, so every node computes the same numbering from the registrations.
package struct NodeLayout: Equatable {
  package var nodeRank: Int
  package var nodeCount: Int
  /// The global rank of this node's first worker, and the global index of its first group.
  package var firstRank: Int
  package var firstGroup: Int
  package var worldSize: Int
  /// KAITIAN_HOST_ID for this node's workers; nil leaves the variable to the environment.
  package var hostID: String?
  /// KAITIAN_SOCKET_ADDR for this node's workers: the address this host reached node 0's
  /// store from, which the other hosts can usually reach too (the engine would otherwise
  /// advertise 127.0.0.1). nil leaves it to the environment.
  package var socketAddress: String?

  package init(
    nodeRank: Int = 0, nodeCount: Int = 1, firstRank: Int = 0, firstGroup: Int = 0,
    worldSize: Int, hostID: String? = nil, socketAddress: String? = nil
  ) {
    self.nodeRank = nodeRank
    self.nodeCount = nodeCount
    self.firstRank = firstRank
    self.firstGroup = firstGroup
    self.worldSize = worldSize
    self.hostID = hostID
    self.socketAddress = socketAddress
  }
}
