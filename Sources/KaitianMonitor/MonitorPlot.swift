import Glibc

/// An RGB color of the plots.
package struct PlotColor: Hashable {
  package var red: UInt8
  package var green: UInt8
  package var blue: UInt8

  package var hex: String {
    let digits = Array("0123456789abcdef")
    return "#"
      + [red, green, blue].map { String([digits[Int($0 >> 4)], digits[Int($0 & 15)]]) }.joined()
  }

  package static let white = PlotColor(red: 255, green: 255, blue: 255)
  package static let black = PlotColor(red: 0, green: 0, blue: 0)
  package static let grid = PlotColor(red: 225, green: 225, blue: 225)
  package static let marker = PlotColor(red: 130, green: 130, blue: 130)
  /// One color per rank, cycling (matplotlib's tab10).
  package static let series: [PlotColor] = [
    PlotColor(red: 31, green: 119, blue: 180), PlotColor(red: 255, green: 127, blue: 14),
    PlotColor(red: 44, green: 160, blue: 44), PlotColor(red: 214, green: 39, blue: 40),
    PlotColor(red: 148, green: 103, blue: 189), PlotColor(red: 140, green: 86, blue: 75),
    PlotColor(red: 227, green: 119, blue: 194), PlotColor(red: 127, green: 127, blue: 127),
    PlotColor(red: 188, green: 189, blue: 34), PlotColor(red: 23, green: 190, blue: 207),
  ]
}

/// A picture as a list of shapes, drawn the same way as SVG (PlotSVG) and as pixels
/// (PlotRaster). Coordinates are pixels from the top left; text `y` is the baseline.
package struct PlotDrawing {
  package enum Anchor { case start, middle, end }

  package enum Shape {
    case rect(x: Double, y: Double, width: Double, height: Double, fill: PlotColor)
    case line(points: [(x: Double, y: Double)], color: PlotColor, width: Double, dashed: Bool)
    case text(String, x: Double, y: Double, color: PlotColor, anchor: Anchor)
  }

  /// Text is drawn this many pixels high (the raster font's 7 rows at scale 2).
  package static let textHeight = 14.0

  package var width: Int
  package var height: Int
  package var shapes: [Shape] = []
}

/// The picture of the paper's Figure 3 for one job: batch share per rank (step lines) over
/// wall-clock time on top, step time per rank below, plan changes as dashed vertical lines.
package enum MonitorPlot {
  package struct Panel {
    package var title: String
    package var series: [(rank: Int, points: [(x: Double, y: Double)])]
    package var yRange: ClosedRange<Double>
  }

  package static let width = 1040
  package static let height = 640
  private static let left = 90.0
  private static let right = 800.0
  private static let panelTops = [70.0, 350.0]
  private static let panelHeight = 220.0

  /// The drawing, or an error when the job has no series to plot.
  package static func draw(_ snapshot: MonitorSnapshot) throws(MonitorError) -> PlotDrawing {
    let ranks = snapshot.ranks.filter { !(snapshot.series[$0] ?? []).isEmpty }
    guard !ranks.isEmpty else {
      throw MonitorError(
        "nothing to plot: the job has no time series (monitor/series/...); workers publish one "
          + "when they record steps with kaitian.JobTelemetry or OnlineBalancer")
    }
    let allTimes = ranks.flatMap { snapshot.series[$0]!.map(\.time) }
    let origin = snapshot.job?.started ?? allTimes.min()!
    let end = max(allTimes.max()!, snapshot.job?.ended ?? 0) - origin
    let xRange = 0...max(end, 1)

    let shares = shareSeries(snapshot, ranks: ranks, origin: origin)
    let steps = ranks.map { rank in
      (rank, snapshot.series[rank]!.map { (x: $0.time - origin, y: $0.stepSeconds * 1000) })
    }
    let slowest = steps.flatMap { $0.1.map(\.y) }.filter(\.isFinite).max() ?? 1
    let panels = [
      Panel(title: "batch share (%)", series: shares, yRange: 0...100),
      Panel(title: "step time (ms)", series: steps, yRange: 0...max(slowest * 1.1, 1e-3)),
    ]

    var drawing = PlotDrawing(width: width, height: height)
    drawing.shapes.append(
      .rect(x: 0, y: 0, width: Double(width), height: Double(height), fill: .white))
    let title =
      "job \(snapshot.job?.jobID ?? "?")" + (snapshot.job.map { " (\($0.state))" } ?? "")
      + ": batch share and step time per rank"
    drawing.shapes.append(.text(title, x: left, y: 26, color: .black, anchor: .start))
    if let gain = snapshot.gain {
      drawing.shapes.append(
        .text(MonitorView.gainLine(gain), x: left, y: 48, color: .black, anchor: .start))
    }
    let changes = snapshot.planChanges.map { $0.time - origin }.filter { xRange.contains($0) }
    for (panel, top) in zip(panels, panelTops) {
      drawPanel(panel, top: top, xRange: xRange, planChanges: changes, into: &drawing)
    }
    let bottom = panelTops[1] + panelHeight
    drawing.shapes.append(
      .text(
        "time since the job started (s)", x: (left + right) / 2, y: bottom + 48, color: .black,
        anchor: .middle))
    drawLegend(snapshot, ranks: ranks, hasChanges: !changes.isEmpty, into: &drawing)
    return drawing
  }

  /// Each rank's batch over the sum of every rank's latest batch, at every point of any rank
  /// from the time all ranks have published, as step lines (a share holds until the next
  /// point).
  package static func shareSeries(
    _ snapshot: MonitorSnapshot, ranks: [Int], origin: Double
  ) -> [(rank: Int, points: [(x: Double, y: Double)])] {
    let events = ranks.flatMap { rank in snapshot.series[rank]!.map { (rank, $0) } }
      .sorted { $0.1.time < $1.1.time }
    var batches: [Int: Int] = [:]
    var result = Dictionary(uniqueKeysWithValues: ranks.map { ($0, [(x: Double, y: Double)]()) })
    for (rank, point) in events {
      batches[rank] = point.batch
      // A share means something once every rank has said its batch.
      let total = batches.values.reduce(0, +)
      guard batches.count == ranks.count, total > 0 else { continue }
      let x = point.time - origin
      for (other, batch) in batches {
        let share = 100 * Double(batch) / Double(total)
        if let last = result[other]!.last {
          guard last.y != share else { continue }
          result[other]!.append((x, last.y))
        }
        result[other]!.append((x, share))
      }
    }
    // Carry every line to the last event so each ends at the same time.
    if let lastX = events.last.map({ $0.1.time - origin }) {
      for rank in ranks {
        if let last = result[rank]!.last, last.x < lastX { result[rank]!.append((lastX, last.y)) }
      }
    }
    return ranks.map { ($0, result[$0]!) }
  }

  private static func drawPanel(
    _ panel: Panel, top: Double, xRange: ClosedRange<Double>, planChanges: [Double],
    into drawing: inout PlotDrawing
  ) {
    let bottom = top + panelHeight
    func x(_ value: Double) -> Double {
      left + (value - xRange.lowerBound) / (xRange.upperBound - xRange.lowerBound) * (right - left)
    }
    func y(_ value: Double) -> Double {
      let clamped = min(max(value, panel.yRange.lowerBound), panel.yRange.upperBound)
      return bottom - (clamped - panel.yRange.lowerBound)
        / (panel.yRange.upperBound - panel.yRange.lowerBound) * panelHeight
    }
    for tick in ticks(panel.yRange) {
      drawing.shapes.append(
        .line(
          points: [(left, y(tick.value)), (right, y(tick.value))], color: .grid, width: 1,
          dashed: false))
      drawing.shapes.append(
        .text(tick.label, x: left - 8, y: y(tick.value) + 5, color: .black, anchor: .end))
    }
    for tick in ticks(xRange) {
      drawing.shapes.append(
        .line(
          points: [(x(tick.value), bottom), (x(tick.value), bottom + 5)], color: .black, width: 1,
          dashed: false))
      drawing.shapes.append(
        .text(tick.label, x: x(tick.value), y: bottom + 22, color: .black, anchor: .middle))
    }
    for change in planChanges {
      drawing.shapes.append(
        .line(
          points: [(x(change), top), (x(change), bottom)], color: .marker, width: 1, dashed: true))
    }
    for (rank, points) in panel.series where !points.isEmpty {
      let color = PlotColor.series[rank % PlotColor.series.count]
      let mapped = points.filter { $0.y.isFinite }.map { (x: x($0.x), y: y($0.y)) }
      drawing.shapes.append(.line(points: mapped, color: color, width: 2, dashed: false))
    }
    drawing.shapes.append(
      .line(
        points: [(left, top), (left, bottom), (right, bottom), (right, top), (left, top)],
        color: .black, width: 1, dashed: false))
    drawing.shapes.append(.text(panel.title, x: left, y: top - 8, color: .black, anchor: .start))
  }

  private static func drawLegend(
    _ snapshot: MonitorSnapshot, ranks: [Int], hasChanges: Bool, into drawing: inout PlotDrawing
  ) {
    var y = panelTops[0] + 10
    for rank in ranks {
      let color = PlotColor.series[rank % PlotColor.series.count]
      drawing.shapes.append(
        .line(
          points: [(right + 20, y - 5), (right + 50, y - 5)], color: color, width: 2, dashed: false)
      )
      drawing.shapes.append(
        .text(
          "rank \(rank) \(snapshot.kind(of: rank))", x: right + 58, y: y, color: .black,
          anchor: .start))
      y += 24
    }
    if hasChanges {
      drawing.shapes.append(
        .line(
          points: [(right + 35, y - 14), (right + 35, y + 4)], color: .marker, width: 1,
          dashed: true))
      drawing.shapes.append(
        .text("plan change", x: right + 58, y: y, color: .black, anchor: .start))
    }
  }

  /// About five round tick values across `range` (steps of 1, 2 or 5 times a power of ten).
  package static func ticks(_ range: ClosedRange<Double>) -> [(value: Double, label: String)] {
    let span = range.upperBound - range.lowerBound
    guard span > 0, span.isFinite else {
      return [(range.lowerBound, MonitorView.fixed(range.lowerBound, 0))]
    }
    let rough = span / 5
    let power = pow(10, floor(log10(rough)))
    let step = [1.0, 2, 5, 10].map { $0 * power }.first { $0 >= rough } ?? 10 * power
    let decimals = max(0, Int(-floor(log10(step))))
    var result: [(Double, String)] = []
    var value = ceil(range.lowerBound / step) * step
    while value <= range.upperBound + step * 1e-9 {
      result.append((value, MonitorView.fixed(value, decimals)))
      value += step
    }
    return result
  }
}
