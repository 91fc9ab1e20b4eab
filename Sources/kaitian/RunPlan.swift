import ArgumentParser
import Glibc

/// One `--group KIND:COUNT[:cpu=FRACTION][:cpus=LIST][:devices=LIST]`: COUNT workers of one
/// device kind with the same limits and devices.
struct GroupSpec: Equatable {
  var kind: String
  var count: Int
  /// CPU quota per worker, in CPUs (0.3 = 30 ms of every 100 ms).
  var cpuFraction: Double?
  /// CPUs the workers may run on, as taskset reads them (sched_setaffinity): "0-1,3".
  var cpuList: String?
  /// Accelerator ids the whole group sees, through the kind's visibility variable.
  var devices: [Int]?

  /// The kinds Kaitian knows a vendor library for; other lowercase labels name CPU groups
  /// that differ in limits (cpu-slow, cpu-fast).
  static let knownKinds = ["cpu", "cuda", "mlu", "rocm", "npu", "xpu"]

  /// The variable each vendor's runtime reads to decide which devices a process sees.
  static let visibilityVariables = [
    "cuda": "CUDA_VISIBLE_DEVICES", "rocm": "HIP_VISIBLE_DEVICES", "mlu": "MLU_VISIBLE_DEVICES",
    "npu": "ASCEND_RT_VISIBLE_DEVICES", "xpu": "ZE_AFFINITY_MASK",
  ]

  var visibilityVariable: String? { Self.visibilityVariables[kind] }

  /// Parses one --group value; `hostCPUs` bounds cpus= lists.
  init(parsing text: String, hostCPUs: Int) throws(ValidationError) {
    let fail = { (problem: String) in ValidationError("--group \(text): \(problem)") }
    let fields = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
    guard fields.count >= 2 else {
      throw fail("expected KIND:COUNT[:cpu=FRACTION][:cpus=LIST][:devices=LIST], e.g. cuda:2")
    }
    kind = fields[0]
    guard Self.isValidKind(kind) else {
      throw fail(
        "unknown device kind '\(kind)'; use \(Self.knownKinds.joined(separator: ", ")) or a "
          + "label of lowercase letters, digits, - and _ that starts with a letter (cpu-slow)")
    }
    guard let count = Int(fields[1]), count >= 1 else {
      throw fail("the worker count '\(fields[1])' must be a whole number of at least 1")
    }
    self.count = count
    var seen: Set<String> = []
    for field in fields.dropFirst(2) {
      guard let equals = field.firstIndex(of: "="), equals != field.startIndex else {
        throw fail("'\(field)' is not KEY=VALUE; keys are cpu, cpus and devices")
      }
      let key = String(field[..<equals])
      let value = String(field[field.index(after: equals)...])
      guard seen.insert(key).inserted else { throw fail("\(key)= is given twice") }
      switch key {
      case "cpu":
        guard let fraction = Double(value), fraction > 0, fraction <= 64 else {
          throw fail("cpu=\(value) must be a number of CPUs per worker in (0, 64], e.g. cpu=0.5")
        }
        cpuFraction = fraction
      case "cpus":
        guard let list = Self.parseList(value, ranges: true), !list.isEmpty else {
          throw fail("cpus=\(value) must list CPU numbers and ranges, e.g. cpus=0-1,3")
        }
        if let beyond = list.first(where: { $0 >= hostCPUs }) {
          throw fail("cpus= names CPU \(beyond) but this host has CPUs 0-\(hostCPUs - 1)")
        }
        cpuList = value
      case "devices":
        guard let list = Self.parseList(value, ranges: false), !list.isEmpty,
          Set(list).count == list.count
        else {
          throw fail("devices=\(value) must list distinct device ids, e.g. devices=0,1")
        }
        guard visibilityVariable != nil else {
          throw fail(
            "devices= needs a kind whose runtime reads a visibility variable "
              + "(\(Self.visibilityVariables.keys.sorted().joined(separator: ", "))), not \(kind)")
        }
        guard list.count >= count else {
          throw fail(
            "\(count) workers but devices= lists only \(list.count); give each worker a device")
        }
        devices = list
      default:
        throw fail("unknown key '\(key)'; keys are cpu, cpus and devices")
      }
    }
  }

  static func isValidKind(_ kind: String) -> Bool {
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
enum ShellWords {
  static func split(_ text: String) throws(ValidationError) -> [String] {
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
      throw ValidationError("unterminated quote or trailing backslash in '\(text)'")
    }
    if inWord { words.append(current) }
    return words
  }
}

/// Everything `kaitian run` decides before starting anything: one entry per rank with its
/// command line and environment. `--dry-run` prints it.
struct RunPlan {
  struct Rank {
    var rank: Int
    var group: Int
    var groupRank: Int
    var kind: String
    var cpuFraction: Double?
    var cpuList: String?
    /// The launch prefix, affinity wrapper and user command, without the cgroup entry
    /// wrapper (which needs the cgroup path known only at start).
    var command: [String]
    var environment: [(String, String)]
    var logPath: String
    var label: String { "rank \(rank) \(kind)" }
  }

  var jobID: String
  var logDirectory: String
  var ranks: [Rank]
  var needsCgroups: Bool { ranks.contains { $0.cpuFraction != nil } }

  /// Placeholders the dry run shows for values chosen at start.
  static let pendingStore = "127.0.0.1:<free port>"
  static let pendingPort = "<free port>"

  /// `store` and `masterPort` are filled in at start; a dry run passes placeholders. The token
  /// is added at start only, so that it never appears in a printed plan.
  init(
    groups: [GroupSpec], prefixes: [String: [String]], command: [String], jobID: String,
    logDirectory: String, store: String, masterPort: String, taskset: String
  ) {
    self.jobID = jobID
    self.logDirectory = logDirectory
    let worldSize = groups.reduce(0) { $0 + $1.count }
    ranks = []
    for (groupIndex, group) in groups.enumerated() {
      for groupRank in 0..<group.count {
        let rank = ranks.count
        var environment: [(String, String)] = [
          ("RANK", "\(rank)"), ("WORLD_SIZE", "\(worldSize)"), ("LOCAL_RANK", "\(rank)"),
          ("LOCAL_WORLD_SIZE", "\(worldSize)"), ("MASTER_ADDR", "127.0.0.1"),
          ("MASTER_PORT", masterPort), ("KAITIAN_DEVICE_KIND", group.kind),
          ("KAITIAN_GROUP", "\(groupIndex)"), ("KAITIAN_GROUP_RANK", "\(groupRank)"),
          ("KAITIAN_GROUP_SIZE", "\(group.count)"), ("KAITIAN_STORE", store),
          ("KAITIAN_JOB_ID", jobID),
        ]
        if let devices = group.devices, let variable = group.visibilityVariable {
          environment.append((variable, devices.map(String.init).joined(separator: ",")))
        }
        let affinity = group.cpuList.map { [taskset, "-c", $0] } ?? []
        ranks.append(
          Rank(
            rank: rank, group: groupIndex, groupRank: groupRank, kind: group.kind,
            cpuFraction: group.cpuFraction, cpuList: group.cpuList,
            command: affinity + (prefixes[group.kind] ?? []) + command, environment: environment,
            logPath: "\(logDirectory)/rank-\(rank).log"))
      }
    }
  }

  /// The plan as text: one block per rank.
  func describe() -> String {
    var lines = ["job \(jobID): \(ranks.count) ranks, logs in \(logDirectory)"]
    for rank in ranks {
      let quota = rank.cpuFraction.map { "cpu quota \(RunPlan.format($0)) CPU" } ?? "no cpu quota"
      let affinity = rank.cpuList.map { ", cpus \($0)" } ?? ""
      lines.append("\(rank.label) (group \(rank.group)): \(quota)\(affinity)")
      lines.append("  command: \(rank.command.map(RunPlan.shellQuoted).joined(separator: " "))")
      for (key, value) in rank.environment { lines.append("  \(key)=\(value)") }
    }
    return lines.joined(separator: "\n")
  }

  /// The plan as one JSON document.
  func json() -> String {
    let ranks = ranks.map { rank in
      JSON.object([
        ("rank", .number(Double(rank.rank))), ("group", .number(Double(rank.group))),
        ("group_rank", .number(Double(rank.groupRank))), ("kind", .string(rank.kind)),
        ("cpu_quota", rank.cpuFraction.map(JSON.number) ?? .null),
        ("cpus", rank.cpuList.map(JSON.string) ?? .null),
        ("command", .array(rank.command.map(JSON.string))),
        ("environment", .object(rank.environment.map { ($0.0, .string($0.1)) })),
        ("log", .string(rank.logPath)),
      ])
    }
    return JSON.object([
      ("job_id", .string(jobID)), ("log_dir", .string(logDirectory)),
      ("world_size", .number(Double(self.ranks.count))), ("ranks", .array(ranks)),
    ]).rendered
  }

  static func format(_ value: Double) -> String {
    value == value.rounded() && abs(value) < 1e15 ? "\(Int(value))" : "\(value)"
  }

  /// A word as a shell would need it to stay one word.
  static func shellQuoted(_ word: String) -> String {
    let plain =
      !word.isEmpty
      && word.unicodeScalars.allSatisfy {
        ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0)
          || "-_./=:,+@%".unicodeScalars.contains($0)
      }
    return plain ? word : "'" + word.replacingAll("'", with: "'\\''") + "'"
  }
}

extension String {
  /// Foundation's replacingOccurrences, which this Foundation-free tool does not have.
  func replacingAll(_ target: Character, with replacement: String) -> String {
    var result = ""
    for character in self {
      if character == target { result += replacement } else { result.append(character) }
    }
    return result
  }
}
