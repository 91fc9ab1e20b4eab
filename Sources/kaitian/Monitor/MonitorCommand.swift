import ArgumentParser
import Glibc
import KaitianLaunch
import KaitianMonitor
import KaitianOutput
import KaitianPOSIX

/// `kaitian monitor`: shows a job's ranks from its store while it runs (or from the snapshot
/// `kaitian run` saved when it ended), and plots shares and step times over time.
struct MonitorCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "monitor",
    abstract: "Show a running job's ranks: batch shares, step times, throughput, plan changes.",
    discussion: """
      Give the job's log directory (kaitian run's --log-dir): the monitor reads job.json and \
      token there and joins the job's store, or reads monitor.json (saved when the job ended) \
      when the store is gone. Or give --store and the job's token (--token-file, or \
      KAITIAN_TOKEN or KAITIAN_TOKEN_FILE) for a store started otherwise.

      The view refreshes every --interval seconds until the job ends (or Ctrl-C): per rank its \
      device kind, batch and share of the global batch, step time, samples/s, time in \
      communication, steps done and the age of its last sample; the job's total samples/s; \
      the last plan changes. Workers publish through kaitian.JobTelemetry (OnlineBalancer does \
      it for them).

      Examples:
        kaitian monitor kaitian-logs/3fa2b1c0
        kaitian monitor kaitian-logs/3fa2b1c0 --once --json
        kaitian monitor kaitian-logs/3fa2b1c0 --plot shares.svg
      """)

  @Argument(help: "The job's log directory (kaitian run --log-dir).")
  var logDir: String?

  @Option(
    help: ArgumentHelp("The store's address, instead of a log directory.", valueName: "host:port"))
  var store: String?

  /// With --store: the job's token.
  @OptionGroup var auth: TokenOptions

  @Flag(help: "Print one view and exit.")
  var once = false

  @Flag(help: "With --once: print the view as one JSON document.")
  var json = false

  @Option(
    help: ArgumentHelp(
      "Write a plot of shares and step times over time to FILE (.svg or .png) and exit.",
      valueName: "file"))
  var plot: String?

  @Option(help: ArgumentHelp("Seconds between refreshes.", valueName: "seconds"))
  var interval = 1.0

  func validate() throws {
    guard (logDir == nil) != (store == nil) else {
      throw ValidationError(
        "give the job's log directory, or --store HOST:PORT and the job's token (not both)")
    }
    guard auth.tokenFile == nil || store != nil else {
      throw ValidationError("--token-file goes with --store; a log directory has its own token")
    }
    guard !json || once else { throw ValidationError("--json prints one view: add --once") }
    if let plot { _ = try PlotFormat(path: plot) }
    guard interval > 0 && interval <= 3600 else {
      throw ValidationError("--interval must be in (0, 3600] seconds")
    }
  }

  func run() throws {
    let connection =
      if let store {
        try MonitorConnection.open(store: store, token: auth.requiredToken())
      } else {
        try MonitorConnection.open(logDirectory: logDir ?? ".")
      }
    if let plot {
      let (snapshot, origin) = try connection.read(series: true)
      let drawing = try MonitorPlot.draw(snapshot)
      let bytes: [UInt8] =
        switch try PlotFormat(path: plot) {
        case .svg: Array(PlotSVG.render(drawing).utf8)
        case .png: PlotRaster.render(drawing).png
        }
      try TextFile.write(plot, bytes)
      print("wrote \(plot) (\(snapshot.series.count) ranks, \(Self.source(origin)))")
      return
    }
    if once {
      let (snapshot, origin) = try connection.read(series: false)
      let view = MonitorView(snapshot: snapshot, origin: origin, now: WallClock.now())
      print(json ? view.json.rendered : view.text)
      return
    }
    let clearScreen = isatty(1) != 0
    while true {
      let (snapshot, origin) = try connection.read(series: false)
      let view = MonitorView(snapshot: snapshot, origin: origin, now: WallClock.now())
      let finished = !(snapshot.job?.isRunning ?? true) || connection.isSnapshot
      // ANSI "home and clear" only on a terminal; a pipe gets one block per refresh.
      print((clearScreen ? "\u{1B}[H\u{1B}[2J" : "") + view.text + (clearScreen ? "" : "\n"))
      fflush(nil)
      if finished { return }
      sleep(for: .seconds(interval))
    }
  }

  private static func source(_ origin: MonitorView.Origin) -> String {
    switch origin {
    case .live(let store): "from the live store \(store)"
    case .snapshot(let path, _): "from the snapshot \(path)"
    }
  }
}

/// The output format of --plot, from the file's extension.
enum PlotFormat {
  case svg, png

  init(path: String) throws(ValidationError) {
    let lowered = path.lowercased()
    if lowered.hasSuffix(".svg") {
      self = .svg
    } else if lowered.hasSuffix(".png") {
      self = .png
    } else {
      throw ValidationError("--plot \(path): unknown extension; use a file ending in .svg or .png")
    }
  }
}
