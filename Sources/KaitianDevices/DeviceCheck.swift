import KaitianLaunch

/// Refuses groups that ask for accelerators this host does not have, before anything starts:
/// a cuda group on a host without NVIDIA GPUs would otherwise fail deep inside the worker.
///
/// CPU groups (kind cpu and labels such as cpu-slow) are not limited: their workers share the
/// cores like any processes. Accelerator kinds are checked against what `kaitian devices`
/// finds; a kind it cannot list (xpu) is refused too, since nothing says the devices exist.
package enum DeviceCheck {
  /// What one group of a job asks for: `count` workers of `kind`, on the devices listed, or on
  /// any `count` devices when `devices` is nil.
  package struct Request {
    package var kind: String
    package var count: Int
    package var devices: [Int]?

    package init(kind: String, count: Int, devices: [Int]?) {
      self.kind = kind
      self.count = count
      self.devices = devices
    }
  }

  /// nil when every group fits; else a message naming the group and what was found.
  /// `label(i)` names group i the way the user gave it (`--group cuda:2`, `[[group]] 1`).
  package static func problem(
    groups: [Request], probes: [ToolProbe], label: (Int) -> String
  ) -> String? {
    let hint = "; pass --no-device-check to launch anyway"
    for (index, group) in groups.enumerated() where DeviceKind.isAccelerator(group.kind) {
      guard let probe = probes.first(where: { $0.kind == group.kind }) else {
        return
          "\(label(index)): kaitian devices cannot list \(group.kind) devices, so their "
          + "presence is not checked\(hint)"
      }
      let found = Set(probe.devices.map { $0.index })
      switch probe.status {
      case .notFound:
        return "\(label(index)): no \(group.kind) devices here (\(probe.tool) not found)\(hint)"
      case .failed(let why):
        return "\(label(index)): cannot list \(group.kind) devices (\(probe.tool) \(why))\(hint)"
      case .found:
        break
      }
      let available = found.sorted().map(String.init).joined(separator: ",")
      if let devices = group.devices {
        if let missing = devices.first(where: { !found.contains($0) }) {
          return
            "\(label(index)): \(group.kind) device \(missing) does not exist; \(probe.tool) "
            + "lists \(found.isEmpty ? "none" : available)\(hint)"
        }
      } else if group.count > found.count {
        return
          "\(label(index)): \(group.count) \(group.kind) workers but this host has "
          + "\(found.count) \(group.kind) device\(found.count == 1 ? "" : "s")"
          + "\(found.isEmpty ? "" : " (\(available))")\(hint)"
      }
    }
    return nil
  }
}
