/// Rows of cells as lines of text, every column as wide as its widest cell, two spaces apart:
/// the tables of `kaitian monitor` and `kaitian devices`. Columns in `rightAligned` are padded on
/// the left (numbers); a line carries no trailing spaces.
package enum AlignedColumns {
  package static func lines(_ rows: [[String]], rightAligned: Set<Int> = []) -> [String] {
    let widths = (0..<(rows.first?.count ?? 0)).map { column in
      rows.map { $0[column].count }.max() ?? 0
    }
    return rows.map { row in
      var line = row.enumerated().map { column, cell in
        let pad = String(repeating: " ", count: widths[column] - cell.count)
        return rightAligned.contains(column) ? pad + cell : cell + pad
      }.joined(separator: "  ")
      while line.last == " " { line.removeLast() }
      return line
    }
  }

  /// `lines` joined by newlines.
  package static func render(_ rows: [[String]], rightAligned: Set<Int> = []) -> String {
    lines(rows, rightAligned: rightAligned).joined(separator: "\n")
  }
}
