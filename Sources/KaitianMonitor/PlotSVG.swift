/// A `PlotDrawing` as an SVG document, written by hand (one element per shape).
package enum PlotSVG {
  package static func render(_ drawing: PlotDrawing) -> String {
    var lines = [
      #"<?xml version="1.0" encoding="UTF-8"?>"#,
      #"<svg xmlns="http://www.w3.org/2000/svg" width="\#(drawing.width)" height="\#(drawing.height)" "#
        + #"viewBox="0 0 \#(drawing.width) \#(drawing.height)" font-family="monospace" "#
        + #"font-size="\#(number(PlotDrawing.textHeight * 1.2))">"#,
    ]
    for shape in drawing.shapes {
      switch shape {
      case .rect(let x, let y, let width, let height, let fill):
        lines.append(
          #"<rect x="\#(number(x))" y="\#(number(y))" width="\#(number(width))" "#
            + #"height="\#(number(height))" fill="\#(fill.hex)"/>"#)
      case .line(let points, let color, let width, let dashed):
        guard points.count > 1 else { continue }
        let path = points.map { "\(number($0.x)),\(number($0.y))" }.joined(separator: " ")
        lines.append(
          #"<polyline points="\#(path)" fill="none" stroke="\#(color.hex)" "#
            + #"stroke-width="\#(number(width))""# + (dashed ? #" stroke-dasharray="6 6""# : "")
            + "/>")
      case .text(let text, let x, let y, let color, let anchor):
        let anchorName =
          switch anchor {
          case .start: "start"
          case .middle: "middle"
          case .end: "end"
          }
        lines.append(
          #"<text x="\#(number(x))" y="\#(number(y))" fill="\#(color.hex)" "#
            + #"text-anchor="\#(anchorName)">\#(escaped(text))</text>"#)
      }
    }
    lines.append("</svg>")
    return lines.joined(separator: "\n") + "\n"
  }

  /// Two decimals at most: enough for pixels, and short files.
  private static func number(_ value: Double) -> String {
    MonitorView.fixed(value, value == value.rounded() ? 0 : 2)
  }

  private static func escaped(_ text: String) -> String {
    var result = ""
    for character in text {
      switch character {
      case "&": result += "&amp;"
      case "<": result += "&lt;"
      case ">": result += "&gt;"
      case "\"": result += "&quot;"
      default: result.append(character)
      }
    }
    return result
  }
}
