import ArgumentParser
import Glibc
import KaitianMonitor
import KaitianOutput
import KaitianRedis
import KaitianStore

/// `kaitian monitor`: shows a job's ranks from its store while it runs (or from the snapshot
/// `kaitian run` saved when it ended), and plots shares and step times over time.
struct MonitorCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "monitor",
    abstract: "Show a running job's ranks: batch shares, step times, throughput, plan changes.",
    discussion: """
      Give the job's log directory (kaitian run's --log-dir): the monitor reads job.json and \
      token there and joins the job's store, or reads monitor.json (saved when the job ended) \
      when the store is gone. Or give --store and --token-file for a store started otherwise.

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

  @Option(help: ArgumentHelp("File holding the job token (with --store).", valueName: "file"))
  var tokenFile: String?

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
        "give the job's log directory, or --store HOST:PORT with --token-file (not both)")
    }
    guard store == nil || tokenFile != nil else {
      throw ValidationError("--store needs --token-file, the file holding the job's token")
    }
    guard tokenFile == nil || store != nil else {
      throw ValidationError("--token-file goes with --store; a log directory has its own token")
    }
    guard !json || once else { throw ValidationError("--json prints one view: add --once") }
    if let plot { _ = try PlotFormat(path: plot) }
    guard interval > 0 && interval <= 3600 else {
      throw ValidationError("--interval must be in (0, 3600] seconds")
    }
  }

  func run() throws {
    let connection = try MonitorConnection.open(
      logDirectory: logDir, store: store, tokenFile: tokenFile)
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
      var pause = timespec(
        tv_sec: Int(interval), tv_nsec: Int((interval - interval.rounded(.down)) * 1e9))
      nanosleep(&pause, nil)
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

/// The monitor's way to a job: its live store, or the snapshot once the store is gone.
final class MonitorConnection {
  private var client: (any KeyValueStore)?
  private let storeAddress: String
  private let snapshotPath: String?

  var isSnapshot: Bool { client == nil }

  private init(client: (any KeyValueStore)?, storeAddress: String, snapshotPath: String?) {
    self.client = client
    self.storeAddress = Self.display(storeAddress)
    self.snapshotPath = snapshotPath
  }

  static func open(logDirectory: String?, store: String?, tokenFile: String?) throws
    -> MonitorConnection
  {
    if let store, let tokenFile {
      let token = try readToken(tokenFile)
      return MonitorConnection(
        client: try connect(store, token: token, jobID: nil, tokenFile: tokenFile),
        storeAddress: store,
        snapshotPath: nil)
    }
    guard let directory = logDirectory else { throw MonitorError("no log directory given") }
    guard TextFile.isDirectory(directory) else {
      throw MonitorError(
        "no such log directory: \(directory) (kaitian run puts it in ./kaitian-logs/<job id> "
          + "unless --log-dir says otherwise)")
    }
    let snapshot = "\(directory)/\(MonitorSource.snapshotFile)"
    let jobFile = "\(directory)/\(JobRecord.jobFile)"
    guard TextFile.exists(jobFile) else {
      throw MonitorError(
        "\(directory) has no \(JobRecord.jobFile): is it the log directory of a kaitian run job?")
    }
    let job = try JSON.parse(try TextFile.read(jobFile))
    guard let address = job["store"]?.stringValue else {
      throw MonitorError(
        "\(jobFile) names no store (expected {\"job_id\", \"store\", \"started\"})")
    }
    // A finished job's store is gone; its snapshot says everything there is to say.
    if TextFile.exists(snapshot) {
      return MonitorConnection(client: nil, storeAddress: address, snapshotPath: snapshot)
    }
    let tokenFile = "\(directory)/\(JobRecord.tokenFile)"
    let token = try readToken(tokenFile)
    do {
      return MonitorConnection(
        client: try connect(
          address, token: token, jobID: job["job_id"]?.stringValue, tokenFile: tokenFile),
        storeAddress: address,
        snapshotPath: snapshot)
    } catch let error as StoreError where error.code == .connectionFailed {
      // The job may have ended between the check above and now.
      if TextFile.exists(snapshot) {
        return MonitorConnection(client: nil, storeAddress: address, snapshotPath: snapshot)
      }
      throw MonitorError(
        "the job's store at \(address) is unreachable and \(directory) has no "
          + "\(MonitorSource.snapshotFile): the job's kaitian run was killed before it could "
          + "save one, or runs on another host (\(error))")
    }
  }

  /// The job's snapshot and where it came from. When the live store goes away mid-watch (the
  /// job ended), switches to the snapshot that kaitian run saves just before stopping it.
  func read(series: Bool) throws -> (MonitorSnapshot, MonitorView.Origin) {
    if let client {
      do {
        let (values, problems) = try MonitorSource.read(store: client, series: series)
        var snapshot = MonitorSnapshot(values: values)
        snapshot.problems += problems
        return (snapshot, .live(store: storeAddress))
      } catch {
        guard let snapshotPath, TextFile.exists(snapshotPath) else {
          throw MonitorError("lost the job's store at \(storeAddress): \(error)")
        }
        self.client = nil
      }
    }
    guard let snapshotPath else { throw MonitorError("no store and no snapshot to read") }
    let snapshot = MonitorSnapshot(values: try MonitorSource.readSnapshot(path: snapshotPath))
    return (
      snapshot, .snapshot(path: snapshotPath, reason: "the job's store is gone (the job ended)")
    )
  }

  private static func readToken(_ path: String) throws -> JobToken {
    let text = String(decoding: try TextFile.read(path, limit: 65536), as: UTF8.self)
    let trimmed = text.split(whereSeparator: { $0 == "\n" || $0 == " " || $0 == "\r" }).first
    return try JobToken(trimmed.map(String.init) ?? "", origin: path)
  }

  /// The store's address as output shows it: a Redis password as ***.
  private static func display(_ address: String) -> String {
    guard case .redis(let url)? = try? StoreLocator.parse(address) else { return address }
    return "\(url)"
  }

  /// The job's live store: Kaitian's embedded one (host:port, with the token) or Redis (the
  /// job's keys under its id).
  private static func connect(
    _ address: String, token: JobToken, jobID: String?, tokenFile: String
  ) throws -> any KeyValueStore {
    let result = Result { () throws(StoreError) -> any KeyValueStore in
      try StoreLocator.connect(
        try StoreLocator.parse(address), token: token, jobID: jobID, connectTimeout: .seconds(2),
        clientName: "kaitian monitor")
    }
    switch result {
    case .success(let client): return client
    case .failure(let error) where error.code == .authenticationFailed:
      throw MonitorError(
        "the store at \(display(address)) refused the token in \(tokenFile): it belongs to another job "
          + "(\(error))")
    case .failure(let error): throw error
    }
  }
}
