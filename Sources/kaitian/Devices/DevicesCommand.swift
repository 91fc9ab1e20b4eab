import ArgumentParser
import Foundation
import Glibc
import KaitianDevices
import KaitianLaunch
import KaitianOutput
import KaitianPOSIX

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

      --bench times Kaitian's built-in workload (a small CNN on 3x32x32 images, forward and \
      backward, batch 32) on every device listed, one at a time, with \
      `PYTHON -m kaitian.device_bench` (PYTHON: --python, else KAITIAN_PYTHON, else ./.venv/bin/python, \
      else python3), and prints samples/s and the score t_min / t_i (the fastest device scores \
      1). The scores are kept in --scores-file for later jobs. A job's own shares still come from \
      its own model (kaitian.measure_plan): devices rank differently on different models.
      """)

  @Flag(help: "Print one JSON document instead of the table.")
  var json = false

  @Option(help: "Seconds each vendor tool may take before it is killed.")
  var timeout = 5.0

  @Flag(help: "Time the built-in training workload on every device and keep the scores.")
  var bench = false

  @Option(help: "With --bench: the minimum timed window per device, in seconds.")
  var benchSeconds = 2.0

  @Option(help: "With --bench: the Python with torch and kaitian to run the workload.")
  var python: String?

  @Option(
    help: "With --bench: where to keep the scores (default ~/.cache/kaitian/device-scores.json).")
  var scoresFile: String?

  func validate() throws {
    guard timeout > 0 else { throw ValidationError("--timeout must be more than 0 seconds") }
    guard benchSeconds > 0 else { throw ValidationError("--bench-seconds must be more than 0") }
    guard bench || (python == nil && scoresFile == nil) else {
      throw ValidationError("--python and --scores-file go with --bench")
    }
  }

  func run() throws {
    let cpu = DeviceProbe.cpu()
    let probes = DeviceProbe.probeTools(timeoutSeconds: timeout)
    guard bench else {
      print(json ? Self.json(cpu: cpu, probes: probes) : Self.table(cpu: cpu, probes: probes))
      return
    }
    let devices = ["cpu"] + probes.flatMap(\.devices).map { "\($0.kind):\($0.index)" }
    let benchmark = DeviceBenchmark(
      python: python ?? DeviceBenchmark.defaultPython(), seconds: benchSeconds,
      timeoutSeconds: benchSeconds * 10 + 120)
    let results = benchmark.measure(devices) { line in
      let bytes = Array("kaitian devices: \(line)\n".utf8)
      _ = write(2, bytes, bytes.count)
    }
    let path = scoresFile ?? DeviceBenchmark.defaultScoresFile()
    let document = DeviceBenchmark.document(
      results, host: DeviceProbe.hostName(), measured: time(nil))
    if results.contains(where: { $0.score != nil }) {
      try Directory.create(String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)]))
      try TextFile.write(path, Array((document.rendered + "\n").utf8))
    }
    if json {
      print(document.rendered)
    } else {
      print(DeviceBenchmark.table(results))
      print(
        results.contains { $0.score != nil }
          ? "scores saved in \(path)" : "nothing measured; no scores saved")
    }
    guard !results.contains(where: { $0.score == nil }) else {
      throw ExitCode(1)
    }
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
    return AlignedColumns.render(rows)
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
