import Foundation
import Glibc
import KaitianPOSIX
import TOMLKit

/// A `kaitian run --job-file`: the job's groups, command and environment in TOML, so that a
/// heterogeneous job (one container or conda environment per vendor) is written down once.
///
/// Every key is checked: an unknown one is an error, so a typo (`devcies`) cannot silently
/// drop a setting. Errors name the file, the line and the key.
package struct JobFile: Equatable {
  package var command: [String]?
  package var environment: [String: String] = [:]
  package var jobID: String?
  package var logDirectory: String?
  package var graceSeconds: Double?
  package var groups: [GroupSpec] = []
  /// The line of each group's `[[group]]` header, for messages about a group as a whole.
  package var groupLines: [Int?] = []

  package static let topLevelKeys = [
    "command", "env", "group", "grace-seconds", "job-id", "log-dir",
  ]
  package static let groupKeys = [
    "command", "count", "cpu", "cpus", "devices", "env", "kind", "prefix", "speed",
  ]

  /// Reads and parses the file at `path`.
  package static func load(
    path: String, hostCPUs: Int, commandOnCommandLine: Bool
  ) throws(JobFileError) -> JobFile {
    let bytes: [UInt8]
    do {
      bytes = try TextFile.read(path, limit: 1 << 20)
    } catch {
      throw JobFileError(path: path, message: "cannot read the job file (\(error))")
    }
    return try JobFile(
      text: String(decoding: bytes, as: UTF8.self), path: path, hostCPUs: hostCPUs,
      commandOnCommandLine: commandOnCommandLine)
  }

  /// Parses a job file's text; `path` is only for messages. `commandOnCommandLine`: words
  /// after `--` will be appended, so a file may leave the command out entirely.
  package init(
    text: String, path: String, hostCPUs: Int, commandOnCommandLine: Bool = false
  ) throws(JobFileError) {
    let table: TOMLTable
    do {
      table = try TOMLTable(string: text)
    } catch let error as TOMLParseError {
      throw JobFileError(
        path: path, line: error.source.begin.line, column: error.source.begin.column,
        message: "not valid TOML: \(error.description)")
    } catch {
      throw JobFileError(path: path, message: "not valid TOML: \(error)")
    }
    let reader = JobFileReader(path: path, locator: KeyLocator(text))
    try reader.rejectUnknownKeys(in: table, allowed: Self.topLevelKeys, section: .top)
    command = try reader.words(table["command"], key: "command", section: .top)
    environment = try reader.environment(table["env"], section: .top)
    if let value = table["job-id"] {
      let id = try reader.string(value, key: "job-id", section: .top)
      if let problem = RunPlan.jobIDProblem(id) {
        throw reader.error(problem, key: "job-id", section: .top)
      }
      jobID = id
    }
    if let value = table["log-dir"] {
      logDirectory = try reader.string(value, key: "log-dir", section: .top)
    }
    if let value = table["grace-seconds"] {
      guard let seconds = value.double ?? value.int.map(Double.init), seconds >= 0 else {
        throw reader.error("must be a number of seconds, 0 or more", key: "grace-seconds")
      }
      graceSeconds = seconds
    }
    guard let groupValue = table["group"] else {
      throw JobFileError(
        path: path,
        message:
          "no [[group]]: add at least one, e.g.\n[[group]]\nkind = \"cpu\"\ncount = 2")
    }
    guard let groupTables = groupValue.array, groupValue.table == nil else {
      throw reader.error("write each group as a [[group]] table", key: "group")
    }
    for (index, value) in groupTables.enumerated() {
      guard let group = value.table else {
        throw reader.error("write each group as a [[group]] table", key: "group")
      }
      groups.append(try reader.group(group, index: index, hostCPUs: hostCPUs))
      groupLines.append(reader.locator.line(of: "", in: .group(index)))
    }
    if command == nil, !commandOnCommandLine,
      let index = groups.firstIndex(where: { $0.command == nil })
    {
      throw reader.error(
        "this group has no command and the file has no top-level command: add "
          + "command = [\"python\", \"train.py\"] at the top or in the group",
        key: nil, section: .group(index))
    }
  }
}

/// A job file problem: where it is and what is wrong.
package struct JobFileError: Error, CustomStringConvertible, Equatable {
  package var path: String
  package var line: Int?
  package var column: Int?
  package var message: String

  /// "job.toml:12: key 'kind' of [[group]] 2: ..." as compilers write positions.
  package var description: String {
    let position = [line, column].compactMap { $0 }.map { ":\($0)" }.joined()
    return "\(path)\(position): \(message)"
  }
}

/// Reads typed values out of the parsed tables and turns every mismatch into an error at the
/// key's line.
private struct JobFileReader {
  package let path: String
  package let locator: KeyLocator

  package func error(
    _ problem: String, key: String?, section: KeyLocator.Section = .top
  ) -> JobFileError {
    let line = locator.line(of: key ?? "", in: section) ?? locator.line(of: "", in: section)
    let place: String
    switch (key, section) {
    case (nil, .group(let index)): place = "[[group]] \(index + 1): "
    case (let key?, .group(let index)): place = "key '\(key)' of [[group]] \(index + 1): "
    case (let key?, .table(let name)): place = "key '\(key)' of [\(name)]: "
    case (let key?, .groupTable(let index, let name)):
      place = "key '\(key)' of [group.\(name)] in [[group]] \(index + 1): "
    case (let key?, .top): place = "key '\(key)': "
    default: place = ""
    }
    return JobFileError(path: path, line: line, message: place + problem)
  }

  package func rejectUnknownKeys(
    in table: TOMLTable, allowed: [String], section: KeyLocator.Section
  ) throws(JobFileError) {
    for key in table.keys.sorted() where !allowed.contains(key) {
      throw error(
        "unknown key; the keys here are \(allowed.joined(separator: ", "))", key: key,
        section: section)
    }
  }

  package func string(
    _ value: TOMLValueConvertible, key: String, section: KeyLocator.Section
  ) throws(JobFileError) -> String {
    guard let text = value.string else {
      throw error("must be a string, not a \(value.type)", key: key, section: section)
    }
    return text
  }

  /// A non-empty array of strings (a command or a prefix), or nil when absent.
  package func words(
    _ value: TOMLValueConvertible?, key: String, section: KeyLocator.Section
  ) throws(JobFileError) -> [String]? {
    guard let value else { return nil }
    guard let array = value.array,
      case let words = array.compactMap({ $0.string }), words.count == array.count,
      !words.isEmpty
    else {
      throw error(
        "must be a non-empty array of strings, e.g. [\"python\", \"train.py\"]", key: key,
        section: section)
    }
    return words
  }

  /// An `env` table: variable names to strings (integers are accepted and written in decimal).
  package func environment(
    _ value: TOMLValueConvertible?, section: KeyLocator.Section
  ) throws(JobFileError) -> [String: String] {
    guard let value else { return [:] }
    guard let table = value.table else {
      throw error("must be a table of NAME = \"value\"", key: "env", section: section)
    }
    let envSection: KeyLocator.Section
    switch section {
    case .group(let index): envSection = .groupTable(index, "env")
    default: envSection = .table("env")
    }
    var result: [String: String] = [:]
    for name in table.keys.sorted() {
      guard let item = table[name], let text = item.string ?? item.int.map({ "\($0)" }) else {
        throw error("must be a string or an integer", key: name, section: envSection)
      }
      guard Self.isVariableName(name) else {
        throw error(
          "not a variable name: use letters, digits and _, not starting with a digit", key: name,
          section: envSection)
      }
      guard !RunPlan.launcherVariables.contains(name) else {
        throw error(
          "kaitian run sets \(name) for every worker; it cannot come from the job file",
          key: name, section: envSection)
      }
      result[name] = text
    }
    return result
  }

  package func group(_ table: TOMLTable, index: Int, hostCPUs: Int) throws(JobFileError)
    -> GroupSpec
  {
    let section = KeyLocator.Section.group(index)
    try rejectUnknownKeys(in: table, allowed: JobFile.groupKeys, section: section)
    guard let kindValue = table["kind"] else {
      throw error("no kind: add kind = \"cpu\" (or cuda, mlu, ...)", key: nil, section: section)
    }
    let kind = try string(kindValue, key: "kind", section: section)
    var devices: [Int]?
    if let value = table["devices"] {
      guard let array = value.array, case let ids = array.compactMap({ $0.int }),
        ids.count == array.count
      else {
        throw error("must be an array of device ids, e.g. [0, 1]", key: "devices", section: section)
      }
      devices = ids
    }
    var count = devices?.count
    if let value = table["count"] {
      guard let number = value.int else {
        throw error("must be a whole number of at least 1", key: "count", section: section)
      }
      count = number
    }
    guard let count else {
      throw error(
        "no count: add count = N (or devices = [...], one worker per device)", key: nil,
        section: section)
    }
    var cpuFraction: Double?
    if let value = table["cpu"] {
      guard let number = value.double ?? value.int.map(Double.init) else {
        throw error("must be a number of CPUs per worker, e.g. 0.5", key: "cpu", section: section)
      }
      cpuFraction = number
    }
    var emulatedSpeed: Double?
    if let value = table["speed"] {
      guard let number = value.double ?? value.int.map(Double.init) else {
        throw error(
          "must be an emulated device speed in (0, 1], e.g. 0.25", key: "speed", section: section)
      }
      emulatedSpeed = number
    }
    let cpuList = try table["cpus"].map { value throws(JobFileError) in
      try string(value, key: "cpus", section: section)
    }
    var group: GroupSpec
    do {
      group = try GroupSpec(
        kind: kind, count: count, cpuFraction: cpuFraction, cpuList: cpuList, devices: devices,
        emulatedSpeed: emulatedSpeed, hostCPUs: hostCPUs)
    } catch {
      throw self.error(error.message, key: error.key, section: section)
    }
    group.prefix = try words(table["prefix"], key: "prefix", section: section) ?? []
    group.command = try words(table["command"], key: "command", section: section)
    group.environment = try environment(table["env"], section: section)
    return group
  }

  package static func isVariableName(_ name: String) -> Bool {
    guard let first = name.unicodeScalars.first, !("0"..."9").contains(first) else {
      return false
    }
    return name.unicodeScalars.allSatisfy {
      ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_"
    }
  }
}

/// The line of each key in a job file's text. TOMLKit reports positions only for syntax
/// errors, so keys are found by scanning the text: a line `key = ...` (bare or quoted key,
/// or a dotted `key.sub = ...`) under the table header it belongs to. Headers count too:
/// `[env]` is key `env` of the top level and `[group.env]` key `env` of the last `[[group]]`.
/// Keys inside multi-line strings can fool the scan; the parse itself is TOMLKit's.
package struct KeyLocator {
  package enum Section: Hashable {
    case top
    /// `[name]` at the top: [env].
    case table(String)
    /// The n-th `[[group]]`, counted from 0.
    case group(Int)
    /// A sub-table of the n-th group: [group.env].
    case groupTable(Int, String)
  }

  private struct Place: Hashable {
    package var section: Section
    package var key: String
  }

  /// First line (from 1) of each key; key "" is a section's header.
  private var lines: [Place: Int] = [:]

  package init(_ text: String) {
    var section = Section.top
    var groups = 0
    for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false)
      .enumerated()
    {
      let line = raw.trimmingCharacters(in: .whitespaces)
      let lineNumber = number + 1
      if line.hasPrefix("[[") {
        let name = Self.headerName(line.dropFirst(2))
        if name == "group" {
          section = .group(groups)
          groups += 1
          record(section, "", lineNumber)
        } else {
          section = .table(name)
          record(.top, name, lineNumber)
        }
      } else if line.hasPrefix("[") {
        let name = Self.headerName(line.dropFirst())
        if name.hasPrefix("group."), groups > 0 {
          let sub = String(name.dropFirst("group.".count))
          section = .groupTable(groups - 1, sub)
          record(section, "", lineNumber)
          record(.group(groups - 1), sub, lineNumber)
        } else {
          section = .table(name)
          record(section, "", lineNumber)
          record(.top, name, lineNumber)
        }
      } else if let key = Self.key(of: line) {
        record(section, key, lineNumber)
      }
    }
  }

  package func line(of key: String, in section: Section) -> Int? {
    lines[Place(section: section, key: key)]
  }

  private mutating func record(_ section: Section, _ key: String, _ line: Int) {
    let place = Place(section: section, key: key)
    if lines[place] == nil { lines[place] = line }
  }

  /// "group]] # x" -> "group".
  private static func headerName(_ rest: Substring) -> String {
    String(rest.prefix { $0 != "]" }).trimmingCharacters(in: .whitespaces).replacingOccurrences(
      of: "\"", with: "")
  }

  /// The first key of `key = value`, `"key" = value` or `key.sub = value`.
  private static func key(of line: String) -> String? {
    guard !line.hasPrefix("#"), line.contains("=") else { return nil }
    var rest = Substring(line)
    let key: String
    if let quote = rest.first, quote == "\"" || quote == "'" {
      rest = rest.dropFirst()
      guard let close = rest.firstIndex(of: quote) else { return nil }
      key = String(rest[..<close])
    } else {
      key = String(rest.prefix { $0 != "=" && $0 != "." && $0 != " " && $0 != "\t" })
    }
    return key.isEmpty ? nil : key
  }
}
