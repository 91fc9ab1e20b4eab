import Glibc
import KaitianLaunch

/// One accelerator (or the host's CPUs) as `kaitian devices` lists it.
struct Device: Equatable {
  /// The device kind `kaitian run --group` takes: cpu, cuda, mlu, rocm, npu.
  var kind: String
  var index: Int
  var name: String
  var memoryBytes: UInt64?
  /// CPU only: logical cores and NUMA nodes.
  var cores: Int?
  var numaNodes: Int?
}

/// A vendor's management tool and what running it found.
struct ToolProbe {
  enum Status: Equatable {
    case found
    case notFound
    case failed(String)
  }

  var tool: String
  var kind: String
  var status: Status
  var devices: [Device]
}

/// Parsers for the host's descriptions of its devices, one per source, each written against
/// the source's documented output (see the samples in DevicesParsingTests). They never throw:
/// lines they do not recognise are skipped, so a tool's new column costs a field, not the
/// listing.
enum DeviceParsers {
  /// /proc/cpuinfo and /proc/meminfo; `numaNodes` counted from /sys/devices/system/node.
  static func cpu(cpuinfo: String, meminfo: String, numaNodes: Int) -> Device {
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
  static func nvidiaSMI(_ text: String) -> [Device] {
    text.split(separator: "\n").compactMap { line in
      let fields = line.split(separator: ",").map { $0.trimmingSpaces() }
      guard fields.count >= 3, let index = Int(fields[0]) else { return nil }
      return Device(
        kind: "cuda", index: index, name: fields[1..<(fields.count - 1)].joined(separator: ","),
        memoryBytes: mebibytes(in: fields[fields.count - 1]).map { $0 << 20 })
    }
  }

  /// `cnmon`'s table: a card row "| 0     /   MLU370-X8    v1.1.4 | 0000:4F:00.0 | ..."
  /// followed by a row whose middle cell is "used MiB/ total MiB".
  static func cnmon(_ text: String) -> [Device] {
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
  static func rocmSMI(_ text: String) -> [Device] {
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
  static func npuSMI(_ text: String) -> [Device] {
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
    guard let at = line.firstIndex(of: separator) else { return (line.trimmingSpaces(), "") }
    return (
      line[..<at].trimmingSpaces(), line[line.index(after: at)...].trimmingSpaces()
    )
  }

  /// The cells of a "| a | b |" table row, trimmed; empty for rule lines.
  private static func tableCells(_ line: String) -> [String] {
    guard line.hasPrefix("|") else { return [] }
    return line.split(separator: "|").map { $0.trimmingSpaces() }
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
enum DeviceProbe {
  static let tools:
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
  static func hostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count - 1) == 0 else { return "unknown" }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  static func cpu() -> Device {
    DeviceParsers.cpu(
      cpuinfo: readFile("/proc/cpuinfo"), meminfo: readFile("/proc/meminfo"),
      numaNodes: countNUMANodes())
  }

  static func probeTools(timeoutSeconds: Double) -> [ToolProbe] {
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

  static func readFile(_ path: String) -> String {
    guard let file = fopen(path, "r") else { return "" }
    defer { fclose(file) }
    var result: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65_536)
    while true {
      let count = fread(&buffer, 1, buffer.count, file)
      if count <= 0 { break }
      result += buffer[0..<count]
    }
    return String(decoding: result, as: UTF8.self)
  }
}

/// A tool's standard output, or why there is none: a tool that hangs (a driver in a bad state
/// makes nvidia-smi block) is killed after the timeout instead of hanging `kaitian devices`.
enum ToolOutput {
  struct Problem: Error, CustomStringConvertible {
    let description: String
  }

  static func run(_ path: String, arguments: [String], timeoutSeconds: Double) -> Result<
    String, Problem
  > {
    var ends: [Int32] = [-1, -1]
    guard pipe(&ends) == 0 else { return .failure(Problem(description: "cannot create a pipe")) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, ends[1], 1)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addclose(&actions, ends[0])
    let argv = ([path] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, path, &actions, nil, argv, environ)
    close(ends[1])
    defer { close(ends[0]) }
    guard spawned == 0 else {
      return .failure(Problem(description: "cannot start: \(String(cString: strerror(spawned)))"))
    }
    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65_536)
    let deadline = LocalProcessGroup.now() + timeoutSeconds
    var timedOut = false
    while true {
      let left = deadline - LocalProcessGroup.now()
      guard left > 0 else {
        timedOut = true
        break
      }
      var fd = pollfd(fd: ends[0], events: Int16(POLLIN), revents: 0)
      guard poll(&fd, 1, Int32(left * 1000) + 1) > 0 else { continue }
      let count = read(ends[0], &buffer, buffer.count)
      if count < 0 && errno == EINTR { continue }
      guard count > 0 else { break }
      output += buffer[0..<count]
    }
    if timedOut { kill(pid, SIGKILL) }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    if timedOut {
      return .failure(Problem(description: "no answer within \(Int(timeoutSeconds)) s"))
    }
    guard status == 0 else {
      let signal = status & 0x7f
      return .failure(
        Problem(
          description: signal == 0
            ? "exited with status \((status >> 8) & 0xff)" : "killed by signal \(signal)"))
    }
    return .success(String(decoding: output, as: UTF8.self))
  }
}

extension StringProtocol {
  func trimmingSpaces() -> String {
    let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
    return String(self.drop(while: isSpace).reversed().drop(while: isSpace).reversed())
  }
}
