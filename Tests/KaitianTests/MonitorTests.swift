import ArgumentParser
import Glibc
import KaitianAuth
import KaitianPOSIX
import KaitianStore
import Testing

@testable import KaitianCLI
@testable import KaitianLaunch
@testable import KaitianMonitor
@testable import KaitianOutput

/// A job's `monitor/` keys as kaitian run and two workers write them: rank 1 is slower, and
/// its series sits in two chunks stored in wrapped-around slots.
enum MonitorFixture {
  static let started = 1_700_000_000.0

  static func store(state: String = "running", badValue: Bool = false) throws -> InMemoryStore {
    let store = InMemoryStore()
    func set(_ key: String, _ text: String) throws {
      try store.set(key: key, value: Array(text.utf8))
    }
    try set(
      "monitor/job",
      #"{"job_id": "j1", "world_size": 2, "started": \#(started), "ranks": ["#
        + #"{"rank": 0, "label": "rank 0 cpu", "kind": "cpu", "group": 0}, "#
        + #"{"rank": 1, "label": "rank 1 cpu-slow", "kind": "cpu-slow", "group": 1}], "#
        + #""state": "\#(state)""# + (state == "running" ? "" : #", "ended": \#(started + 30)"#)
        + "}")
    for (rank, batch, step) in [(0, 12, 0.1), (1, 4, 0.2)] {
      try set(
        "monitor/rank/\(rank)",
        #"{"rank": \#(rank), "kind": "\#(rank == 0 ? "cpu" : "cpu-slow")", "host": "h", "#
          + #""pid": \#(100 + rank), "step": 50, "epoch": 1, "batch": \#(batch), "#
          + #""step_seconds": \#(step), "compute_seconds": \#(step * 0.75), "#
          + #""comm_seconds": \#(step * 0.25), "samples_per_second": \#(Double(batch) / step), "#
          + #""time": \#(started + 20)}"#)
    }
    let fields =
      #""fields": ["time", "step", "epoch", "batch", "step_seconds", "compute_seconds", "#
      + #""comm_seconds", "samples_per_second"]"#
    func point(_ t: Double, _ batch: Int, _ step: Double) -> String {
      "[\(started + t), 1, 0, \(batch), \(step), \(step), 0, \(Double(batch) / step)]"
    }
    try set(
      "monitor/series/0/0",
      #"{"chunk": 0, \#(fields), "points": [\#(point(1, 8, 0.1)), \#(point(11, 12, 0.1))]}"#)
    // Chunk 64 in slot 0 and chunk 65 in slot 1: the reader orders by chunk, not slot.
    try set(
      "monitor/series/1/1", #"{"chunk": 65, \#(fields), "points": [\#(point(12, 4, 0.2))]}"#)
    try set(
      "monitor/series/1/0",
      #"{"chunk": 64, \#(fields), "points": [\#(point(2, 8, 0.4)), \#(point(11, 8, 0.4))]}"#)
    try set(
      "monitor/plan",
      #"[{"step": 20, "epoch": 0, "iteration": 21, "old": [8, 8], "new": [12, 4], "#
        + #""seconds_per_sample": [0.01, 0.05], "time": \#(started + 10)}]"#)
    try set("unrelated/key", "not json")
    if badValue { try set("monitor/rank/7", "{broken") }
    return store
  }

  static func snapshot(state: String = "running") throws -> MonitorSnapshot {
    let (values, problems) = try MonitorSource.read(store: try store(state: state), series: true)
    #expect(problems.isEmpty)
    return MonitorSnapshot(values: values)
  }
}

@Suite("kaitian monitor: JSON values (Foundation's decoder and encoder)")
struct JSONValueTests {
  @Test func parsesValuesStringsAndNesting() throws {
    let value = try JSON.parse(
      #" {"a": [1, -2.5e3, true, false, null], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "o": {}} "#)
    #expect(value["a"]?.arrayValue?.count == 5)
    #expect(value["a"]?.arrayValue?[1].doubleValue == -2500)
    #expect(value["s"]?.stringValue == "x\"\\/\né😀")
    #expect(value["o"] != nil && value["missing"] == nil)
    #expect(try JSON.parse("[]").arrayValue?.isEmpty == true)
  }

  @Test(arguments: [
    "", "{", "{\"a\" 1}", "tru", "\"open", "1 2", "{\"a\": nan}", "\"\\q\"", "[\"\u{01}\"]",
    String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000),
    "\u{FF}\u{FE}",
  ])
  func rejectsMalformedInput(text: String) {
    #expect(throws: JSON.Malformed.self) { try JSON.parse(text) }
  }

  @Test func rendersSortedCompactTextThatReadsBackEqual() throws {
    let value = JSON.object([
      ("z", .array([.number(3), .number(-2.5), .bool(true), .null])), ("a", .string("q\"\n/")),
      ("inf", .number(.infinity)),
    ])
    #expect(value.rendered == #"{"a":"q\"\n/","inf":null,"z":[3,-2.5,true,null]}"#)
    #expect(
      try JSON.parse(value.rendered)
        == .object([
          ("a", .string("q\"\n/")), ("inf", .null),
          ("z", .array([.number(3), .number(-2.5), .bool(true), .null])),
        ]))
  }

  @Test func decodesTypedValuesAndNamesTheBadField() throws {
    struct Point: Decodable, Equatable {
      var x: Int
      var label: String
    }
    #expect(
      try JSON.parse(#"{"x": 4, "label": "p"}"#).decoded(as: Point.self) == Point(x: 4, label: "p"))
    #expect(throws: JSON.Malformed.self) {
      try JSON.parse(#"{"x": 4.5, "label": "p"}"#).decoded(as: Point.self)
    }
    do {
      _ = try JSON.parse(#"{"x": 4}"#).decoded(as: Point.self)
      Issue.record("a missing field decoded")
    } catch {
      #expect(error.description == "missing field 'label'")
    }
  }
}

@Suite("kaitian monitor: model and views")
struct MonitorModelTests {
  @Test func decodesJobSamplesSeriesAndPlanChanges() throws {
    let snapshot = try MonitorFixture.snapshot()
    let job = try #require(snapshot.job)
    #expect(job.jobID == "j1" && job.worldSize == 2 && job.isRunning)
    #expect(job.ranks.map(\.kind) == ["cpu", "cpu-slow"])
    #expect(snapshot.ranks == [0, 1])
    #expect(snapshot.samples[1]?.batch == 4 && snapshot.samples[1]?.stepSeconds == 0.2)
    #expect(snapshot.series[1]?.map(\.time) == [2, 11, 12].map { MonitorFixture.started + $0 })
    #expect(snapshot.planChanges.map(\.new) == [[12, 4]])
    #expect(snapshot.globalBatch == 16 && snapshot.totalSamplesPerSecond == 140)
  }

  @Test func aBadValueIsReportedAndTheRestIsShown() throws {
    let store = try MonitorFixture.store(badValue: true)
    let (values, problems) = try MonitorSource.read(store: store, series: false)
    #expect(problems.count == 1 && problems[0].hasPrefix("monitor/rank/7"))
    #expect(values["monitor/series/0/0"] == nil, "series are read only for plots")
    var malformed = values
    malformed["monitor/rank/3"] = .object([("rank", .string("three"))])
    let snapshot = MonitorSnapshot(values: malformed)
    #expect(snapshot.samples.count == 2)
    #expect(snapshot.problems == ["monitor/rank/3: mistyped field 'rank'"])
  }

  @Test func textViewShowsEveryRankItsShareAndThePlanChanges() throws {
    let view = MonitorView(
      snapshot: try MonitorFixture.snapshot(), origin: .live(store: "127.0.0.1:9"),
      now: MonitorFixture.started + 21)
    let lines = view.text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    #expect(lines[0] == "job j1  running  2 ranks  running for 21.0 s")
    #expect(lines[1] == "store 127.0.0.1:9 (live)")
    #expect(lines[3] == "RANK  KIND      BATCH  SHARE  STEP ms  SAMPLES/s   COMM  STEP    AGE")
    #expect(lines[4] == "0     cpu          12  75.0%    100.0      120.0  25.0%    50  1.0 s")
    #expect(lines[5] == "1     cpu-slow      4  25.0%    200.0       20.0  25.0%    50  1.0 s")
    #expect(lines[6] == "total 140.0 samples/s, global batch 16")
    #expect(lines[8] == "  step 20 epoch 0 iteration 21: [8, 8] -> [12, 4], 11.0 s ago")
  }

  @Test func aFinishedJobIsShownAgainstItsEndAndSaysItIsASnapshot() throws {
    let view = MonitorView(
      snapshot: try MonitorFixture.snapshot(state: "failed"),
      origin: .snapshot(path: "d/monitor.json", reason: "the job's store is gone"),
      now: MonitorFixture.started + 5000)
    #expect(view.text.hasPrefix("job j1  failed  2 ranks  ran 30.0 s\n"))
    #expect(view.text.contains("the job's store is gone: showing the snapshot d/monitor.json"))
    #expect(view.rows[0].age == 10)
  }

  @Test func jsonDocumentFollowsTheDocumentedSchema() throws {
    let view = MonitorView(
      snapshot: try MonitorFixture.snapshot(), origin: .live(store: "s:1"),
      now: MonitorFixture.started + 21)
    let document = try JSON.parse(view.json.rendered)
    guard case .object(let members) = document else {
      Issue.record("not an object")
      return
    }
    #expect(
      members.map(\.0)
        == [
          "source", "store", "job", "total_samples_per_second", "global_batch", "ranks",
          "plan_changes", "gain", "problems",
        ].sorted())
    let gainIsNull = if case .null? = document["gain"] { true } else { false }
    #expect(gainIsNull, "without a monitor/gain key, gain is null")
    #expect(document["job"]?["state"]?.stringValue == "running")
    let ranks = try #require(document["ranks"]?.arrayValue)
    #expect(ranks.count == 2)
    guard case .object(let rank) = ranks[1] else {
      Issue.record("rank not an object")
      return
    }
    #expect(
      rank.map(\.0)
        == [
          "rank", "kind", "host", "pid", "step", "epoch", "batch", "share", "step_seconds",
          "compute_seconds", "comm_seconds", "comm_fraction", "samples_per_second", "age_seconds",
        ].sorted())
    #expect(ranks[1]["share"]?.doubleValue == 0.25 && ranks[1]["kind"]?.stringValue == "cpu-slow")
    #expect(document["plan_changes"]?.arrayValue?.first?["new"]?.arrayValue?.count == 2)
  }

  @Test func theGainIsShownInTextJSONAndThePlot() throws {
    let store = try MonitorFixture.store()
    try store.set(
      key: "monitor/gain",
      value: Array(
        #"{"fastest_group": "cpu", "fastest_group_alone": 100, "ideal": 150, "achieved": 130}"#
          .utf8))
    let (values, _) = try MonitorSource.read(store: store, series: true)
    let snapshot = MonitorSnapshot(values: values)
    let line =
      "gain: 1.30x the fastest group (cpu) alone, 87% of all groups together (130.0 samples/s "
      + "against 100.0 and 150.0, by the compute speeds measured before training)"
    let view = MonitorView(snapshot: snapshot, origin: .live(store: "s:1"), now: 0)
    #expect(view.text.contains("\n" + line + "\n"))
    let document = try JSON.parse(view.json.rendered)
    #expect(document["gain"]?["over_fastest_group"]?.doubleValue == 1.3)
    #expect(document["gain"]?["fastest_group"]?.stringValue == "cpu")
    #expect(PlotSVG.render(try MonitorPlot.draw(snapshot)).contains("1.30x the fastest group"))
    var broken = values
    broken["monitor/gain"] = .object([("fastest_group", .number(1))])
    #expect(MonitorSnapshot(values: broken).problems.first?.hasPrefix("monitor/gain") == true)
  }

  @Test func sharesAreStepLinesFromTheTimeEveryRankPublished() throws {
    let snapshot = try MonitorFixture.snapshot()
    let shares = MonitorPlot.shareSeries(snapshot, ranks: [0, 1], origin: MonitorFixture.started)
    // From t=2 both ranks hold 8 (50 %); at t=11 rank 0 takes 12 of 20, then rank 1 drops to 4.
    #expect(shares[0].points.map(\.x) == [2, 11, 11, 12, 12])
    #expect(shares[0].points.map(\.y) == [50, 50, 60, 60, 75])
    #expect(shares[1].points.map(\.y) == [50, 50, 40, 40, 25])
  }

  @Test func ticksAreRound() {
    #expect(MonitorPlot.ticks(0...100).map(\.label) == ["0", "20", "40", "60", "80", "100"])
    #expect(MonitorPlot.ticks(0...0.9).map(\.label) == ["0.0", "0.2", "0.4", "0.6", "0.8"])
  }
}

@Suite("kaitian monitor: plots")
struct MonitorPlotTests {
  @Test func svgIsWellFormedAndHasEveryPart() throws {
    let svg = PlotSVG.render(try MonitorPlot.draw(try MonitorFixture.snapshot()))
    #expect(svg.contains("rank 1 cpu-slow") && svg.contains("plan change"))
    #expect(svg.contains("batch share (%)") && svg.contains("step time (ms)"))
    let path = MonitorFiles.temporary("plot.svg")
    try TextFile.write(path, Array(svg.utf8))
    let check = try Python.run(
      "import sys, xml.dom.minidom as m; d = m.parse(sys.argv[1]); "
        + "print(len(d.getElementsByTagName('polyline')), len(d.getElementsByTagName('text')))",
      path)
    #expect(check.status == 0, "\(check.errors)")
    let counts = check.output.split(separator: " ").compactMap { Int(String($0).trimmed) }
    #expect(counts.count == 2 && counts[0] > 10 && counts[1] > 10, "\(check.output)")
  }

  @Test func pngHasValidChunksAndDecodes() throws {
    let raster = PlotRaster.render(try MonitorPlot.draw(try MonitorFixture.snapshot()))
    let png = raster.png
    #expect(Array(png.prefix(8)) == PNGEncoder.signature)
    let path = MonitorFiles.temporary("plot.png")
    try TextFile.write(path, png)
    // Python's zlib checks the CRCs and the Adler-32; matplotlib decodes the whole image.
    let check = try Python.run(
      """
      import struct, sys, zlib
      import matplotlib.image
      data = open(sys.argv[1], 'rb').read()
      pos, idat, types = 8, b'', []
      while pos < len(data):
          (length,) = struct.unpack('>I', data[pos:pos + 4])
          kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
          (crc,) = struct.unpack('>I', data[pos + 8 + length:pos + 12 + length])
          assert zlib.crc32(kind + body) == crc, kind
          types.append(kind.decode())
          idat += body if kind == b'IDAT' else b''
          pos += 12 + length
      width, height = struct.unpack('>II', data[16:24])
      assert len(zlib.decompress(idat)) == (width + 1) * height
      image = matplotlib.image.imread(sys.argv[1])
      colors = len({tuple(p) for p in image.reshape(-1, image.shape[-1]).tolist()})
      print(' '.join(types), image.shape[1], image.shape[0], colors)
      """, path)
    #expect(check.status == 0, "\(check.errors)")
    #expect(check.output.trimmed == "IHDR PLTE IDAT IEND 1040 640 \(raster.palette.count)")
    #expect(raster.palette.count >= 6, "white, black, grid, marker and two ranks")
  }

  @Test func checksumsMatchTheirStandards() {
    #expect(PNGEncoder.crc32(Array("123456789".utf8)) == 0xCBF4_3926)
    #expect(PNGEncoder.adler32(Array("Wikipedia".utf8)) == 0x11E6_0398)
    let big = [UInt8](repeating: 7, count: 200_000)
    let stream = PNGEncoder.zlibStored(big)
    #expect(stream.count == 2 + 200_000 + 4 * 5 + 4, "four stored blocks of 65535 and one more")
  }

  @Test func aJobWithoutSeriesHasNothingToPlot() throws {
    var snapshot = try MonitorFixture.snapshot()
    snapshot.series = [:]
    #expect(throws: MonitorError.self) { try MonitorPlot.draw(snapshot) }
  }
}

@Suite("kaitian monitor: arguments and errors", .serialized)
struct MonitorErrorTests {
  private func problem(_ arguments: [String]) -> String? {
    do {
      _ = try MonitorCommand.parse(arguments)
      return nil
    } catch {
      return MonitorCommand.message(for: error)
    }
  }

  @Test func rejectsBadArguments() {
    #expect(problem([])?.contains("log directory") == true)
    #expect(problem(["d", "--store", "h:1", "--token-file", "t"])?.contains("not both") == true)
    #expect(problem(["--store", "h:1"]) == nil)  // the token may come from the environment
    #expect(problem(["d", "--token-file", "t"])?.contains("goes with --store") == true)
    #expect(problem(["d", "--json"])?.contains("--once") == true)
    #expect(problem(["d", "--plot", "x.jpg"])?.contains("unknown extension") == true)
    #expect(problem(["d", "--interval", "0"])?.contains("--interval") == true)
    #expect(problem(["d", "--plot", "x.PNG"]) == nil)
  }

  @Test func noSuchLogDirectory() {
    let child = try? ChildProcess("kaitian", ["monitor", "/nonexistent/kaitian-logs/x", "--once"])
    #expect(child?.wait(seconds: 20) != 0)
    #expect(child?.errors.contains("no such log directory: /nonexistent/kaitian-logs/x") == true)
  }

  @Test func aDirectoryThatIsNotAJobsLogs() throws {
    let directory = MonitorFiles.temporaryDirectory()
    let child = try ChildProcess("kaitian", ["monitor", directory, "--once"])
    #expect(child.wait(seconds: 20) == 1)
    #expect(child.errors.contains("has no job.json"))
  }

  @Test func wrongTokenIsNamed() throws {
    let server = StoreServer(
      host: "127.0.0.1", port: 0, token: try JobToken("right-token-0123456789"))
    let port = try server.start()
    defer { server.stop() }
    let directory = try MonitorFiles.jobDirectory(
      store: "127.0.0.1:\(port)", token: "wrong-token-0123456789")
    let child = try ChildProcess("kaitian", ["monitor", directory, "--once"])
    #expect(child.wait(seconds: 20) == 1)
    #expect(child.errors.contains("refused the token from \(directory)/token"), "\(child.errors)")
  }

  @Test func unreachableStoreWithoutSnapshot() throws {
    let port = try FreePort.pick()
    let directory = try MonitorFiles.jobDirectory(
      store: "127.0.0.1:\(port)", token: "unused-token-0123456789")
    let child = try ChildProcess("kaitian", ["monitor", directory, "--once"])
    #expect(child.wait(seconds: 20) == 1)
    #expect(child.errors.contains("is unreachable"), "\(child.errors)")
    #expect(child.errors.contains("has no monitor.json"))
  }
}

@Suite("kaitian monitor: live jobs", .serialized)
struct MonitorLiveTests {
  @Test func liveViewRefreshesUntilTheJobEnds() throws {
    let token = try JobToken("live-token-0123456789")
    let server = StoreServer(host: "127.0.0.1", port: 0, token: token)
    let port = try server.start()
    defer { server.stop() }
    let client = try StoreClient.connect(address: "127.0.0.1:\(port)", token: token)
    let fixture = try MonitorFixture.store()
    for key in try fixture.keys(prefix: "") {
      try client.set(key: key, value: try #require(try fixture.tryGet(key: key)))
    }
    let tokenFile = MonitorFiles.temporary("token")
    try TextFile.write(tokenFile, Array("live-token-0123456789\n".utf8), mode: 0o600)
    let child = try ChildProcess(
      "kaitian",
      ["monitor", "--store", "127.0.0.1:\(port)", "--token-file", tokenFile, "--interval", "0.2"])
    #expect(child.waitForOutput("job j1  running", count: 2, seconds: 20), "\(child.errors)")
    #expect(child.wait(seconds: 0.5) == nil, "keeps refreshing while the job runs")
    let finished = try #require(try fixture.tryGet(key: "monitor/job"))
    let text = String(decoding: finished, as: UTF8.self).replacingRunning(with: "succeeded")
    try client.set(key: "monitor/job", value: Array(text.utf8))
    #expect(child.wait(seconds: 20) == 0)
    #expect(child.output.contains("job j1  succeeded"))
    #expect(!child.output.contains("\u{1B}["), "no ANSI codes when stdout is not a terminal")
  }

  @Test func aFailedJobIsRecordedAsFailedWithItsCause() throws {
    let logs = MonitorFiles.temporaryDirectory() + "/logs"
    let run = try ChildProcess(
      "kaitian", ["run", "--log-dir", logs, "--group", "cpu:1", "--", "/bin/sh", "-c", "exit 3"])
    #expect(run.wait(seconds: 30) == 1)
    let once = try ChildProcess("kaitian", ["monitor", logs, "--once", "--json"])
    #expect(once.wait(seconds: 20) == 0, "\(once.errors)")
    let job = try JSON.parse(once.output)["job"]
    #expect(job?["state"]?.stringValue == "failed")
    #expect(job?["failure"]?.stringValue?.contains("rank 0 cpu exited with status 3") == true)
    #expect(job?["ended"]?.doubleValue != nil)
  }

  static let libraryAvailable = MonitorFiles.kaitianLibrary != nil

  @Test(
    "kaitian run with telemetry workers, then monitor --once --json and --plot",
    .enabled(if: libraryAvailable, "needs libKaitianC.so: swift build --product KaitianC"))
  func endToEnd() throws {
    let script = MonitorFiles.temporary("worker.py")
    try TextFile.write(
      script,
      Array(
        """
        import os, time
        from kaitian.telemetry import JobTelemetry
        telemetry = JobTelemetry.from_environment(interval=0.05)
        assert telemetry is not None, "no KAITIAN_STORE"
        rank = int(os.environ["RANK"])
        for step in range(12):
            if rank == 0 and step == 6:
                telemetry.record_plan_change(step=6, epoch=0, iteration=7, old=[8, 8], new=[10, 6],
                                             seconds_per_sample=[0.001, 0.002])
            batch = 8 if step < 6 else (10 if rank == 0 else 6)
            time.sleep(0.01 * (1 + rank))
            telemetry.record_step(batch=batch, step_seconds=0.01 * (1 + rank), compute_seconds=0.008)
        telemetry.close()
        """.utf8))
    let logs = MonitorFiles.temporaryDirectory() + "/logs"
    let environment = [
      "PYTHONPATH=\(MonitorFiles.repository)/python",
      "KAITIAN_LIBRARY=\(MonitorFiles.kaitianLibrary ?? "")",
    ]
    let run = try ChildProcess(
      "/usr/bin/env",
      environment + [
        ChildProcess.builtProduct("kaitian"), "run", "--log-dir", logs, "--job-id", "e2e",
        "--group", "cpu:2", "--", "\(MonitorFiles.repository)/.venv/bin/python", script,
      ])
    #expect(run.wait(seconds: 120) == 0, "\(run.errors)")
    #expect(TextFile.exists("\(logs)/monitor.json") && TextFile.exists("\(logs)/job.json"))
    var status = stat()
    #expect(stat("\(logs)/token", &status) == 0 && status.st_mode & 0o777 == 0o600)

    let once = try ChildProcess("kaitian", ["monitor", logs, "--once", "--json"])
    #expect(once.wait(seconds: 20) == 0, "\(once.errors)")
    let document = try JSON.parse(once.output)
    #expect(document["source"]?.stringValue == "snapshot")
    #expect(document["job"]?["state"]?.stringValue == "succeeded")
    #expect(document["job"]?["job_id"]?.stringValue == "e2e")
    let ranks = try #require(document["ranks"]?.arrayValue)
    #expect(ranks.map { $0["rank"]?.intValue } == [0, 1])
    #expect(ranks.map { $0["step"]?.intValue } == [12, 12])
    #expect(ranks.map { $0["batch"]?.intValue } == [10, 6])
    #expect(document["plan_changes"]?.arrayValue?.count == 1)

    for name in ["x.png", "x.svg"] {
      let path = "\(logs)/\(name)"
      let plot = try ChildProcess("kaitian", ["monitor", logs, "--plot", path])
      #expect(plot.wait(seconds: 20) == 0, "\(plot.errors)")
      #expect(plot.output.contains("wrote \(path) (2 ranks"))
      #expect((try? TextFile.read(path).count) ?? 0 > 1000)
    }
  }
}

/// Files and processes the monitor tests share.
enum MonitorFiles {
  static var repository: String {
    let file = #filePath
    return String(file[..<file.firstRange(of: "/Tests/KaitianTests/")!.lowerBound])
  }

  static var kaitianLibrary: String? {
    ["release", "debug"].map { "\(repository)/.build/\($0)/libKaitianC.so" }
      .first { TextFile.exists($0) }
  }

  static func temporaryDirectory() -> String {
    var template = Array("/tmp/kaitian-monitor-test-XXXXXX".utf8CString)
    return String(cString: mkdtemp(&template))
  }

  static func temporary(_ name: String) -> String { temporaryDirectory() + "/" + name }

  /// A log directory as kaitian run leaves it while the job runs.
  static func jobDirectory(store: String, token: String) throws -> String {
    let directory = temporaryDirectory()
    try TextFile.write(
      "\(directory)/job.json", Array(#"{"job_id": "t", "store": "\#(store)", "started": 1}"#.utf8))
    try TextFile.write("\(directory)/token", Array(token.utf8), mode: 0o600)
    return directory
  }
}

/// The repository's Python (.venv) running a snippet.
enum Python {
  static func run(_ code: String, _ arguments: String...) throws -> (
    status: Int32?, output: String, errors: String
  ) {
    let child = try ChildProcess(
      "\(MonitorFiles.repository)/.venv/bin/python", ["-c", code] + arguments)
    let status = child.wait(seconds: 120)
    return (status, child.output, child.errors)
  }
}

extension String {
  fileprivate var trimmed: String {
    String(drop { $0 == " " || $0 == "\n" }.reversed().drop { $0 == " " || $0 == "\n" }.reversed())
  }

  fileprivate func replacingRunning(with state: String) -> String {
    replacing(#""state": "running""#, with: #""state": "\#(state)""#)
  }
}
