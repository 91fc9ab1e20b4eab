import ArgumentParser
import Glibc

/// `kaitian devices`: what this host can run ranks on, in the kinds `kaitian run` takes.
struct DevicesCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "devices",
    abstract: "List this host's CPUs and accelerators by device kind.",
    discussion: """
      The CPU is always listed (model from /proc/cpuinfo, logical cores, memory from \
      /proc/meminfo, NUMA nodes from /sys/devices/system/node). Accelerators come from their \
      vendors' tools, each run only when it is on PATH and killed after --timeout seconds: \
      nvidia-smi (cuda), cnmon (mlu), rocm-smi (rocm) and npu-smi (npu). A missing tool is \
      reported as not found, not as an error.
      """)

  @Flag(help: "Print one JSON document instead of the table.")
  var json = false

  @Option(help: "Seconds each vendor tool may take before it is killed.")
  var timeout = 5.0

  func validate() throws {
    guard timeout > 0 else { throw ValidationError("--timeout must be more than 0 seconds") }
  }

  func run() throws {
    let cpu = DeviceProbe.cpu()
    let probes = DeviceProbe.probeTools(timeoutSeconds: timeout)
    print(json ? Self.json(cpu: cpu, probes: probes) : Self.table(cpu: cpu, probes: probes))
  }

  static func table(cpu: Device, probes: [ToolProbe]) -> String {
    var rows = [["KIND", "INDEX", "NAME", "MEMORY", "NOTES"]]
    let nodes = cpu.numaNodes ?? 1
    rows.append([
      "cpu", "-", cpu.name, memory(cpu.memoryBytes),
      "\(cpu.cores ?? 0) logical cores, \(nodes) NUMA node\(nodes == 1 ? "" : "s")",
    ])
    for probe in probes {
      switch probe.status {
      case .notFound:
        rows.append([probe.kind, "-", "-", "-", "\(probe.tool) not found"])
      case .failed(let problem):
        rows.append([probe.kind, "-", "-", "-", "\(probe.tool) failed: \(problem)"])
      case .found where probe.devices.isEmpty:
        rows.append([probe.kind, "-", "-", "-", "\(probe.tool) lists no devices"])
      case .found:
        for device in probe.devices {
          rows.append([device.kind, "\(device.index)", device.name, memory(device.memoryBytes), ""])
        }
      }
    }
    let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
    return rows.map { row in
      zip(row, widths).map { $0.padding(to: $1) }.joined(separator: "  ").trimmingSpaces()
    }.joined(separator: "\n")
  }

  /// {"cpu": {...}, "accelerators": [...], "tools": [{"tool", "kind", "status"}]}; status is
  /// "found", "absent" or "failed" (with "error").
  static func json(cpu: Device, probes: [ToolProbe]) -> String {
    let device = { (device: Device) -> JSON in
      var members: [(String, JSON)] = [
        ("kind", .string(device.kind)), ("index", .number(Double(device.index))),
        ("name", .string(device.name)),
        ("memory_bytes", device.memoryBytes.map { .number(Double($0)) } ?? .null),
      ]
      if let cores = device.cores { members.append(("logical_cores", .number(Double(cores)))) }
      if let nodes = device.numaNodes { members.append(("numa_nodes", .number(Double(nodes)))) }
      return .object(members)
    }
    let tools = probes.map { probe -> JSON in
      var members: [(String, JSON)] = [
        ("tool", .string(probe.tool)), ("kind", .string(probe.kind)),
      ]
      switch probe.status {
      case .found: members.append(("status", .string("found")))
      case .notFound: members.append(("status", .string("absent")))
      case .failed(let problem):
        members += [("status", .string("failed")), ("error", .string(problem))]
      }
      return .object(members)
    }
    return JSON.object([
      ("cpu", device(cpu)), ("accelerators", .array(probes.flatMap(\.devices).map(device))),
      ("tools", .array(tools)),
    ]).rendered
  }

  /// Binary units, one decimal: "15.6 GiB".
  static func memory(_ bytes: UInt64?) -> String {
    guard let bytes else { return "-" }
    let gibibytes = Double(bytes) / Double(1 << 30)
    let tenths = Int((gibibytes * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) GiB"
  }
}
