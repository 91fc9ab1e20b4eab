/// What `kaitian monitor` knows about a job, decoded from its `monitor/` keys (docs/CLI.md):
/// the job record `kaitian run` writes, each worker's latest sample and time series (written
/// by python/kaitian/telemetry.py), and the plan changes.
///
/// A value that cannot be decoded is skipped and named in `problems`, so one bad writer does
/// not hide the rest of the job.
struct MonitorSnapshot {
  struct RankInfo: Equatable {
    var rank: Int
    var label: String
    var kind: String
    var group: Int
  }

  struct Job {
    var jobID: String
    var worldSize: Int
    var started: Double
    var state: String
    var ended: Double?
    var failure: String?
    var ranks: [RankInfo]
    var isRunning: Bool { state == "running" }
  }

  struct Sample {
    var rank: Int
    var kind: String
    var host: String
    var pid: Int
    var step: Int
    var epoch: Int
    var batch: Int
    var stepSeconds: Double
    var computeSeconds: Double
    var commSeconds: Double
    var samplesPerSecond: Double
    var time: Double
  }

  /// One point of a rank's series: a publish window's means.
  struct Point {
    var time: Double
    var step: Int
    var batch: Int
    var stepSeconds: Double
    var commSeconds: Double
    var samplesPerSecond: Double
  }

  struct PlanChange {
    var step: Int
    var epoch: Int
    var iteration: Int
    var old: [Int]
    var new: [Int]
    var secondsPerSample: [Double]
    var time: Double
  }

  static let prefix = "monitor/"
  static let jobKey = "monitor/job"
  static let planKey = "monitor/plan"
  static let rankPrefix = "monitor/rank/"
  static let seriesPrefix = "monitor/series/"

  var job: Job?
  var samples: [Int: Sample] = [:]
  var series: [Int: [Point]] = [:]
  var planChanges: [PlanChange] = []
  var problems: [String] = []

  /// Decodes every `monitor/` key of `values`; other keys are ignored.
  init(values: [String: JSON]) {
    var chunks: [Int: [(index: Int, points: [Point])]] = [:]
    for (key, value) in values.sorted(by: { $0.key < $1.key }) {
      do {
        if key == Self.jobKey {
          job = try Self.job(value)
        } else if key == Self.planKey {
          planChanges = try Self.planChanges(value)
        } else if key.hasPrefix(Self.rankPrefix) {
          let sample = try Self.sample(value)
          samples[sample.rank] = sample
        } else if key.hasPrefix(Self.seriesPrefix) {
          let parts = key.dropFirst(Self.seriesPrefix.count).split(separator: "/")
          guard parts.count == 2, let rank = Int(parts[0]) else {
            throw DecodeError("expected monitor/series/<rank>/<slot>")
          }
          let chunk = try Self.chunk(value)
          chunks[rank, default: []].append(chunk)
        }
      } catch {
        problems.append("\(key): \(error)")
      }
    }
    for (rank, list) in chunks {
      series[rank] = list.sorted { $0.index < $1.index }.flatMap(\.points)
    }
  }

  /// Every rank the job record names, plus any that published without one.
  var ranks: [Int] {
    Set((job?.ranks.map(\.rank) ?? []) + Array(samples.keys) + Array(series.keys)).sorted()
  }

  func kind(of rank: Int) -> String {
    job?.ranks.first { $0.rank == rank }?.kind ?? samples[rank]?.kind ?? "?"
  }

  /// The batch of every rank with a sample, summed: the global batch of the latest plan.
  var globalBatch: Int { samples.values.reduce(0) { $0 + $1.batch } }

  var totalSamplesPerSecond: Double { samples.values.reduce(0) { $0 + $1.samplesPerSecond } }

  // MARK: Decoding

  struct DecodeError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
  }

  private static func field<T>(_ value: JSON, _ name: String, _ read: (JSON) -> T?)
    throws(DecodeError)
    -> T
  {
    guard let member = value[name], let result = read(member) else {
      throw DecodeError("missing or mistyped field '\(name)'")
    }
    return result
  }

  private static func job(_ value: JSON) throws(DecodeError) -> Job {
    var ranks: [RankInfo] = []
    for entry in try field(value, "ranks", \.array) {
      ranks.append(
        RankInfo(
          rank: try field(entry, "rank", \.int), label: try field(entry, "label", \.string),
          kind: try field(entry, "kind", \.string), group: try field(entry, "group", \.int)))
    }
    return Job(
      jobID: try field(value, "job_id", \.string), worldSize: try field(value, "world_size", \.int),
      started: try field(value, "started", \.double), state: try field(value, "state", \.string),
      ended: value["ended"]?.double, failure: value["failure"]?.string, ranks: ranks)
  }

  private static func sample(_ value: JSON) throws(DecodeError) -> Sample {
    Sample(
      rank: try field(value, "rank", \.int), kind: try field(value, "kind", \.string),
      host: value["host"]?.string ?? "?", pid: value["pid"]?.int ?? 0,
      step: try field(value, "step", \.int), epoch: value["epoch"]?.int ?? 0,
      batch: try field(value, "batch", \.int),
      stepSeconds: try field(value, "step_seconds", \.double),
      computeSeconds: try field(value, "compute_seconds", \.double),
      commSeconds: try field(value, "comm_seconds", \.double),
      samplesPerSecond: try field(value, "samples_per_second", \.double),
      time: try field(value, "time", \.double))
  }

  private static func chunk(_ value: JSON) throws(DecodeError) -> (index: Int, points: [Point]) {
    let fields = try field(value, "fields", \.array).map { $0.string ?? "" }
    func column(_ name: String) throws(DecodeError) -> Int {
      guard let index = fields.firstIndex(of: name) else {
        throw DecodeError("the series has no field '\(name)'")
      }
      return index
    }
    let time = try column("time")
    let step = try column("step")
    let batch = try column("batch")
    let stepSeconds = try column("step_seconds")
    let commSeconds = try column("comm_seconds")
    let rate = try column("samples_per_second")
    var points: [Point] = []
    for row in try field(value, "points", \.array) {
      let numbers = (row.array ?? []).map(\.double)
      guard numbers.count == fields.count else {
        throw DecodeError("a point has \(numbers.count) values for \(fields.count) fields")
      }
      let values = numbers.map { $0 ?? .nan }
      points.append(
        Point(
          time: values[time], step: Int(exactly: values[step].rounded()) ?? 0,
          batch: Int(exactly: values[batch].rounded()) ?? 0, stepSeconds: values[stepSeconds],
          commSeconds: values[commSeconds], samplesPerSecond: values[rate]))
    }
    return (try field(value, "chunk", \.int), points)
  }

  private static func planChanges(_ value: JSON) throws(DecodeError) -> [PlanChange] {
    guard let entries = value.array else { throw DecodeError("expected a list of plan changes") }
    var changes: [PlanChange] = []
    for entry in entries {
      func ints(_ name: String) throws(DecodeError) -> [Int] {
        try field(entry, name, \.array).map { $0.int ?? 0 }
      }
      changes.append(
        PlanChange(
          step: try field(entry, "step", \.int), epoch: try field(entry, "epoch", \.int),
          iteration: try field(entry, "iteration", \.int), old: try ints("old"),
          new: try ints("new"),
          secondsPerSample: try field(entry, "seconds_per_sample", \.array).map { $0.double ?? 0 },
          time: try field(entry, "time", \.double)))
    }
    return changes
  }
}
