import ArgumentParser

/// A byte count written as 8, 512K, 64M or 1G (powers of 1024), as nccl-tests takes them.
struct ByteCount: ExpressibleByArgument, CustomStringConvertible {
  let value: Int

  init(_ value: Int) { self.value = value }

  init?(argument: String) {
    let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30]
    var text = argument.uppercased()
    if text.hasSuffix("B") { text.removeLast() }
    var multiplier = 1
    if let last = text.last, let unit = units[last] {
      multiplier = unit
      text.removeLast()
    }
    guard let number = Int(text), number >= 0 else { return nil }
    let (product, overflow) = number.multipliedReportingOverflow(by: multiplier)
    guard !overflow else { return nil }
    value = product
  }

  var description: String {
    for (suffix, unit) in [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)]
    where value >= unit && value % unit == 0 {
      return "\(value / unit)\(suffix)"
    }
    return "\(value)"
  }
}
