/// The device kinds Kaitian knows a vendor library for: the one table in Swift. Other lowercase
/// labels (cpu-slow, cpu-fast) name CPU groups that differ in limits. Python's table is
/// `kaitian.topology.DEVICE_KINDS`.
package struct DeviceKind: Sendable {
  /// The name `--group KIND:...` and `KAITIAN_DEVICE_KIND` use.
  package let name: String
  /// The variable the vendor's runtime reads to decide which devices a process sees; nil for
  /// the host's CPUs.
  package let visibilityVariable: String?

  /// Whether a group of this kind needs devices (everything else runs on CPUs).
  package var isAccelerator: Bool { visibilityVariable != nil }

  package static let all: [DeviceKind] = [
    DeviceKind(name: "cpu", visibilityVariable: nil),
    DeviceKind(name: "cuda", visibilityVariable: "CUDA_VISIBLE_DEVICES"),
    DeviceKind(name: "mlu", visibilityVariable: "MLU_VISIBLE_DEVICES"),
    DeviceKind(name: "rocm", visibilityVariable: "HIP_VISIBLE_DEVICES"),
    DeviceKind(name: "npu", visibilityVariable: "ASCEND_RT_VISIBLE_DEVICES"),
    DeviceKind(name: "xpu", visibilityVariable: "ZE_AFFINITY_MASK"),
  ]

  /// The accelerator kinds' names, sorted.
  package static var acceleratorNames: [String] {
    all.filter(\.isAccelerator).map(\.name).sorted()
  }

  /// Whether `name` is a kind that needs devices (a CPU label is not).
  package static func isAccelerator(_ name: String) -> Bool { named(name)?.isAccelerator ?? false }

  /// The known kind called `name`, or nil for a CPU label.
  package static func named(_ name: String) -> DeviceKind? { all.first { $0.name == name } }
}
