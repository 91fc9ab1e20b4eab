import Testing

@testable import KaitianCLI
@testable import KaitianDevices
@testable import KaitianOutput

/// Each parser against sample output written from the tool's documented format; none of these
/// tools runs on the machines the tests run on.
@Suite("kaitian devices: parsers")
struct DevicesParsingTests {
  @Test func cpuFromProc() {
    let cpuinfo = """
      processor\t: 0
      vendor_id\t: GenuineIntel
      model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz
      cpu MHz\t\t: 2100.000

      processor\t: 1
      model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz

      """
    let meminfo = "MemTotal:       16303012 kB\nMemFree:         1234567 kB\n"
    let cpu = DeviceParsers.cpu(cpuinfo: cpuinfo, meminfo: meminfo, numaNodes: 2)
    #expect(cpu.name == "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz")
    #expect(cpu.cores == 2 && cpu.numaNodes == 2)
    #expect(cpu.memoryBytes == 16_303_012 * 1024)
  }

  @Test func nvidiaSMICSV() {
    let text = """
      0, NVIDIA GeForce GTX 1080, 8192 MiB
      1, NVIDIA A100-SXM4-40GB, 40960 MiB

      """
    #expect(
      DeviceParsers.nvidiaSMI(text) == [
        Device(kind: "cuda", index: 0, name: "NVIDIA GeForce GTX 1080", memoryBytes: 8192 << 20),
        Device(kind: "cuda", index: 1, name: "NVIDIA A100-SXM4-40GB", memoryBytes: 40960 << 20),
      ])
  }

  @Test func cnmonTable() {
    let text = """
      Thu Mar 16 10:24:33 2023
      +------------------------------------------------------------------------------+
      | CNMON v1.27.4                                               Driver v4.20.18  |
      +-------------------------------+----------------------+-----------------------+
      | Card  VF  Name       Firmware |               Bus-Id | Util        Ecc-Error |
      | Fan   Temp      Pwr:Usage/Cap |         Memory-Usage | Mode     Compute-Mode |
      |===============================+======================+=======================|
      | 0     /   MLU370-X8    v1.1.4 |         0000:4F:00.0 | 0%                  0 |
      |  0%   31C         64 W/ 250 W |     0 MiB/ 23308 MiB | FULL          Default |
      +-------------------------------+----------------------+-----------------------+
      | 1     /   MLU370-S4    v1.1.4 |         0000:50:00.0 | 3%                  0 |
      |  0%   35C         24 W/ 75 W  |   512 MiB/ 23374 MiB | FULL          Default |
      +-------------------------------+----------------------+-----------------------+

      +------------------------------------------------------------------------------+
      | Processes:                                                                   |
      |  Card  MI  PID     Command Line                             MLU Memory Usage |
      |==============================================================================|
      |  No running processes found                                                  |
      +------------------------------------------------------------------------------+
      """
    #expect(
      DeviceParsers.cnmon(text) == [
        Device(kind: "mlu", index: 0, name: "MLU370-X8", memoryBytes: 23308 << 20),
        Device(kind: "mlu", index: 1, name: "MLU370-S4", memoryBytes: 23374 << 20),
      ])
  }

  @Test func rocmSMIProductAndMemory() {
    let text = """
      ============================ ROCm System Management Interface ============================
      ====================================== Product Info ======================================
      GPU[0]\t\t: Card series: \t\tAMD Instinct MI210
      GPU[0]\t\t: Card model: \t\t0x740f
      GPU[0]\t\t: Card vendor: \t\tAdvanced Micro Devices, Inc. [AMD/ATI]
      GPU[0]\t\t: Card SKU: \t\tD67301
      GPU[1]\t\t: Card series: \t\tNavi 21 [Radeon RX 6800/6800 XT / 6900 XT]
      ==========================================================================================
      ================================== Memory Usage (Bytes) ==================================
      GPU[0]\t\t: VRAM Total Memory (B): 68702699520
      GPU[0]\t\t: VRAM Total Used Memory (B): 10854400
      GPU[1]\t\t: VRAM Total Memory (B): 17163091968
      GPU[1]\t\t: VRAM Total Used Memory (B): 7311360
      ==========================================================================================
      ================================== End of ROCm SMI Log ===================================
      """
    #expect(
      DeviceParsers.rocmSMI(text) == [
        Device(kind: "rocm", index: 0, name: "AMD Instinct MI210", memoryBytes: 68_702_699_520),
        Device(
          kind: "rocm", index: 1, name: "Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]",
          memoryBytes: 17_163_091_968),
      ])
  }

  @Test func npuSMIInfo() {
    let text = """
      +------------------------------------------------------------------------------------------------+
      | npu-smi 23.0.rc2                 Version: 23.0.rc2                                             |
      +---------------------------+---------------+----------------------------------------------------+
      | NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
      | Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
      +===========================+===============+====================================================+
      | 0     910B                | OK            | 93.5        40                0    / 0             |
      | 0                         | 0000:C1:00.0  | 0           0    / 0          3161 / 65536         |
      +===========================+===============+====================================================+
      | 1     910B                | OK            | 90.1        41                0    / 0             |
      | 0                         | 0000:C2:00.0  | 0           0    / 0          3160 / 65536         |
      +===========================+===============+====================================================+
      +---------------------------+---------------+----------------------------------------------------+
      | NPU     Chip              | Process id    | Process name             | Process memory(MB)      |
      +===========================+===============+====================================================+
      | 0       0                 | 12345         | python                   | 3000                    |
      +===========================+===============+====================================================+
      """
    #expect(
      DeviceParsers.npuSMI(text) == [
        Device(kind: "npu", index: 0, name: "Ascend 910B", memoryBytes: 65536 << 20),
        Device(kind: "npu", index: 1, name: "Ascend 910B", memoryBytes: 65536 << 20),
      ])
  }

  @Test func absentToolsAreReportedNotFound() throws {
    let cpu = Device(
      kind: "cpu", index: 0, name: "Test CPU", memoryBytes: 1 << 30, cores: 4, numaNodes: 1)
    let probes = [
      ToolProbe(tool: "nvidia-smi", kind: "cuda", status: .notFound, devices: []),
      ToolProbe(
        tool: "cnmon", kind: "mlu", status: .found,
        devices: [Device(kind: "mlu", index: 0, name: "MLU370-X8", memoryBytes: 24 << 30)]),
    ]
    let table = DevicesCommand.table(cpu: cpu, probes: probes)
    #expect(table.contains("nvidia-smi not found"))
    #expect(table.contains("MLU370-X8  24.0 GiB"))
    #expect(table.contains("4 logical cores, 1 NUMA node"))
    let json = try JSON.parse(DevicesCommand.json(cpu: cpu, probes: probes))
    #expect(
      json["tools"]?.arrayValue?.first
        == .object([
          ("kind", .string("cuda")), ("status", .string("absent")), ("tool", .string("nvidia-smi")),
        ]))
    let accelerator = json["accelerators"]?.arrayValue?.first
    #expect(
      accelerator?["kind"]?.stringValue == "mlu" && accelerator?["name"]?.stringValue == "MLU370-X8"
    )
  }
}
