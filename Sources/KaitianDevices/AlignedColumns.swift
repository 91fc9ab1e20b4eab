import Foundation

/// Rows of cells as text with every column as wide as its widest cell, two spaces apart: the
/// tables of `kaitian devices` and its benchmark.
package enum AlignedColumns {
  package static func render(_ rows: [[String]]) -> String {
    guard let first = rows.first else { return "" }
    let widths = first.indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
    return rows.map { row in
      zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }
        .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
    }.joined(separator: "\n")
  }
}
