import Foundation
import Glibc
import KaitianLaunch
import KaitianPOSIX

/// One accelerator (or the host's CPUs) as `kaitian devices` lists it.
package struct Device: Equatable {
  /// The device kind `kaitian run --group` takes: cpu, cuda, mlu, rocm, npu.
  package var kind: String
  package var index: Int
  package var name: String
  package var memoryBytes: UInt64?
  /// CPU only: logical cores and NUMA nodes.
  package var cores: Int?
  package var numaNodes: Int?
}

/// A vendor's management tool and what running it found.
package struct ToolProbe {
  package enum Status: Equatable {
    case found
    case notFound
    case failed(String)
  }

  package var tool: String
  package var kind: String
  package var status: Status
  package var devices: [Device]
}

/// Parsers for the host's descriptions of its devices, one per source, each written against
/// the source's documented output (see the samples in DevicesParsingTests). They never throw:
/// lines they do not recognise are skipped, so a tool's new column costs a field, not the
/// listing.
package enum DeviceParsers {
  /// /proc/cpuinfo and /proc/meminfo; `numaNodes` counted from /sys/devices/system/node.
  package static func cpu(cpuinfo: String, meminfo: String, numaNodes: Int) -> Device {
    var model = "unknown CPU"
    var processors = 0
    for line in cpuinfo.split(separator: "\n") {
      let (key, value) = keyValue(line, separator: ":")
      if key == "processor" { processors += 1 }
      // "model name" on x86, "Model Name"/"CPU part" style fields elsewhere.
      if model == "unknown CPU" && (key.lowercased() == "model name" || key == "Hardware") {
        model = value
      }
    }
    var memory: UInt64?
    for line in meminfo.split(separator: "\n") {
      let (key, value) = keyValue(line, separator: ":")
      if key == "MemTotal", let kibibytes = UInt64(value.split(separator: " ").first ?? "") {
        memory = kibibytes * 1024
      }
    }
    return Device(
      kind: "cpu", index: 0, name: model, memoryBytes: memory, cores: processors,
      numaNodes: max(1, numaNodes))
  }

  /// `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader`:
  /// "0, NVIDIA A100-SXM4-40GB, 40960 MiB" per GPU.
  package static func nvidiaSMI(_ text: String) -> [Device] {
    text.split(separator: "\n").compactMap { line in
      let fields = line.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
      guard fields.count >= 3, let index = Int(fields[0]) else { return nil }
      return Device(
        kind: "cuda", index: index, name: fields[1..<(fields.count - 1)].joined(separator: ","),
        memoryBytes: mebibytes(in: fields[fields.count - 1]).map { $0 << 20 })
    }
  }

  /// `cnmon`'s table: a card row "| 0     /   MLU370-X8    v1.1.4 | 0000:4F:00.0 | ..."
  /// followed by a row whose middle cell is "used MiB/ total MiB".
  package static func cnmon(_ text: String) -> [Device] {
    let lines = text.split(separator: "\n").map(String.init)
    var devices: [Device] = []
    for (number, line) in lines.enumerated() {
      let cells = tableCells(line)
      guard cells.count >= 2 else { continue }
      let words = cells[0].split(separator: " ")
      guard words.count >= 3, let card = Int(words[0]), words[1] == "/" || Int(words[1]) != nil,
        words[2].hasPrefix("MLU")
      else { continue }
      var memory: UInt64?
      if number + 1 < lines.count {
        let next = tableCells(lines[number + 1])
        memory = next.count >= 2 ? totalOfPair(next[1]).map { $0 << 20 } : nil
      }
      devices.append(Device(kind: "mlu", index: card, name: String(words[2]), memoryBytes: memory))
    }
    return devices
  }

  /// `rocm-smi --showproductname --showmeminfo vram`: "GPU[0]\t\t: Card series: \t\tName" and
  /// "GPU[0]\t\t: VRAM Total Memory (B): 17163091968" lines.
  package static func rocmSMI(_ text: String) -> [Device] {
    var names: [Int: String] = [:]
    var models: [Int: String] = [:]
    var memories: [Int: UInt64] = [:]
    for line in text.split(separator: "\n") {
      guard line.hasPrefix("GPU["), let close = line.firstIndex(of: "]"),
        let index = Int(line[line.index(line.startIndex, offsetBy: 4)..<close])
      else { continue }
      // After "GPU[0]\t\t: " comes "Key: value".
      let rest = line[line.index(after: close)...].drop { $0 == " " || $0 == "\t" || $0 == ":" }
      let (key, value) = keyValue(rest, separator: ":")
      switch key.lowercased() {
      case "card series": names[index] = value
      case "card model": models[index] = value
      case "vram total memory (b)": memories[index] = UInt64(value)
      default: break
      }
    }
    return Set(names.keys).union(models.keys).union(memories.keys).sorted().map { index in
      Device(
        kind: "rocm", index: index, name: names[index] ?? models[index] ?? "AMD GPU",
        memoryBytes: memories[index])
    }
  }

  /// `npu-smi info`: per NPU a row "| 0     910B  | OK  | power temp hugepages |" and a chip
  /// row "| 0  | 0000:C1:00.0 | aicore  used / total  used / total |" (memory, then HBM in MB);
  /// the larger total is the device's memory. The process table below is ignored.
  package static func npuSMI(_ text: String) -> [Device] {
    let lines = text.split(separator: "\n").map(String.init)
    var devices: [Device] = []
    for (number, line) in lines.enumerated() {
      if line.contains("Process id") { break }
      let cells = tableCells(line)
      guard cells.count >= 3 else { continue }
      let words = cells[0].split(separator: " ")
      guard words.count >= 2, let id = Int(words[0]), Int(words[1]) == nil,
        cells[1].first?.isLetter == true
      else { continue }
      var memory: UInt64?
      if number + 1 < lines.count {
        let chip = tableCells(lines[number + 1])
        memory = chip.count >= 3 ? totalOfPair(chip[2]).map { $0 << 20 } : nil
      }
      devices.append(
        Device(kind: "npu", index: id, name: "Ascend \(words[1])", memoryBytes: memory))
    }
    return devices
  }

  private static func keyValue(_ line: Substring, separator: Character) -> (String, String) {
    guard let at = line.firstIndex(of: separator) else {
      return (line.trimmingCharacters(in: .whitespaces), "")
    }
    return (
      line[..<at].trimmingCharacters(in: .whitespaces),
      line[line.index(after: at)...].trimmingCharacters(in: .whitespaces)
    )
  }

  /// The cells of a "| a | b |" table row, trimmed; empty for rule lines.
  private static func tableCells(_ line: String) -> [String] {
    guard line.hasPrefix("|") else { return [] }
    return line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
  }

  /// "40960 MiB" -> 40960.
  private static func mebibytes(in text: String) -> UInt64? {
    let words = text.split(separator: " ")
    guard words.count == 2, words[1] == "MiB" else { return nil }
    return UInt64(words[0])
  }

  /// The largest total among "used / total" pairs ("0 MiB/ 23308 MiB", "3161 / 65536"):
  /// the number after each slash.
  private static func totalOfPair(_ text: String) -> UInt64? {
    text.split(separator: "/", omittingEmptySubsequences: false).dropFirst().compactMap {
      UInt64($0.drop { $0 == " " }.prefix { $0.isNumber })
    }.max()
  }
}

/// Reads the host: /proc, /sys, and each vendor tool found on PATH, run with a timeout.
package enum DeviceProbe {
  package static let tools:
    [(tool: String, kind: String, arguments: [String], parse: @Sendable (String) -> [Device])] = [
      (
        "nvidia-smi", "cuda", ["--query-gpu=index,name,memory.total", "--format=csv,noheader"],
        DeviceParsers.nvidiaSMI
      ),
      ("cnmon", "mlu", [], DeviceParsers.cnmon),
      ("rocm-smi", "rocm", ["--showproductname", "--showmeminfo", "vram"], DeviceParsers.rocmSMI),
      ("npu-smi", "npu", ["info"], DeviceParsers.npuSMI),
    ]

  /// This host's name, as the scores file records it.
  package static func hostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count - 1) == 0 else { return "unknown" }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  package static func cpu() -> Device {
    DeviceParsers.cpu(
      cpuinfo: readFile("/proc/cpuinfo"), meminfo: readFile("/proc/meminfo"),
      numaNodes: countNUMANodes())
  }

  package static func probeTools(timeoutSeconds: Double) -> [ToolProbe] {
    tools.map { entry in
      guard let path = ExecutableSearch.find(entry.tool) else {
        return ToolProbe(tool: entry.tool, kind: entry.kind, status: .notFound, devices: [])
      }
      switch ToolOutput.run(path, arguments: entry.arguments, timeoutSeconds: timeoutSeconds) {
      case .success(let text):
        return ToolProbe(
          tool: entry.tool, kind: entry.kind, status: .found, devices: entry.parse(text))
      case .failure(let problem):
        return ToolProbe(
          tool: entry.tool, kind: entry.kind, status: .failed(problem.description), devices: [])
      }
    }
  }

  /// node0, node1, ... under /sys/devices/system/node; 0 where the kernel has no NUMA support.
  private static func countNUMANodes() -> Int {
    guard let directory = opendir("/sys/devices/system/node") else { return 0 }
    defer { closedir(directory) }
    var count = 0
    while let entry = readdir(directory) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) {
        String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self)
      }
      if name.hasPrefix("node"), Int(name.dropFirst(4)) != nil { count += 1 }
    }
    return count
  }

  /// A file's text, or "" when it cannot be read (a /proc file this kernel does not have).
  package static func readFile(_ path: String) -> String {
    (try? TextFile.read(path)).map { String(decoding: $0, as: UTF8.self) } ?? ""
  }
}
