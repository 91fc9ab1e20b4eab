/// What `kaitian monitor` knows about a job, decoded from its `monitor/` keys (docs/CLI.md):
/// the job record `kaitian run` writes, each worker's latest sample and time series (written
/// by python/kaitian/telemetry.py), and the plan changes.
///
/// A value that cannot be decoded is skipped and named in `problems`, so one bad writer does
/// not hide the rest of the job.
struct MonitorSnapshot {
  struct RankInfo {
    var rank: Int
    var kind: String
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

  /// One point of a rank's series (a publish window's means): what the plots draw.
  struct Point {
    var time: Double
    var batch: Int
    var stepSeconds: Double
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

  /// What the job gained over its fastest group alone, as the training script measured it
  /// (`monitor/gain`, written once at the end): throughputs in samples per second.
  struct Gain {
    var fastestGroup: String
    var fastestGroupAlone: Double
    var ideal: Double
    var achieved: Double
    var overFastestGroup: Double { fastestGroupAlone > 0 ? achieved / fastestGroupAlone : .nan }
    var ofIdeal: Double { ideal > 0 ? achieved / ideal : .nan }
  }

  static let prefix = "monitor/"
  static let gainKey = "monitor/gain"
  static let jobKey = "monitor/job"
  static let planKey = "monitor/plan"
  static let rankPrefix = "monitor/rank/"
  static let seriesPrefix = "monitor/series/"

  var job: Job?
  var samples: [Int: Sample] = [:]
  var series: [Int: [Point]] = [:]
  var planChanges: [PlanChange] = []
  var gain: Gain?
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
        } else if key == Self.gainKey {
          gain = Gain(
            fastestGroup: try Self.string(value, "fastest_group"),
            fastestGroupAlone: try Self.double(value, "fastest_group_alone"),
            ideal: try Self.double(value, "ideal"), achieved: try Self.double(value, "achieved"))
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

  private static func int(_ value: JSON, _ name: String) throws(DecodeError) -> Int {
    guard let result = value[name]?.intValue else { throw mistyped(name) }
    return result
  }

  private static func double(_ value: JSON, _ name: String) throws(DecodeError) -> Double {
    guard let result = value[name]?.doubleValue else { throw mistyped(name) }
    return result
  }

  private static func string(_ value: JSON, _ name: String) throws(DecodeError) -> String {
    guard let result = value[name]?.stringValue else { throw mistyped(name) }
    return result
  }

  private static func array(_ value: JSON, _ name: String) throws(DecodeError) -> [JSON] {
    guard let result = value[name]?.arrayValue else { throw mistyped(name) }
    return result
  }

  private static func mistyped(_ name: String) -> DecodeError {
    DecodeError("missing or mistyped field '\(name)'")
  }

  private static func job(_ value: JSON) throws(DecodeError) -> Job {
    var ranks: [RankInfo] = []
    for entry in try array(value, "ranks") {
      ranks.append(
        RankInfo(
          rank: try int(entry, "rank"), kind: try string(entry, "kind"))
      )
    }
    return Job(
      jobID: try string(value, "job_id"),
      worldSize: try int(value, "world_size"),
      started: try double(value, "started"),
      state: try string(value, "state"),
      ended: value["ended"]?.doubleValue, failure: value["failure"]?.stringValue, ranks: ranks)
  }

  private static func sample(_ value: JSON) throws(DecodeError) -> Sample {
    Sample(
      rank: try int(value, "rank"), kind: try string(value, "kind"),
      host: value["host"]?.stringValue ?? "?", pid: value["pid"]?.intValue ?? 0,
      step: try int(value, "step"), epoch: value["epoch"]?.intValue ?? 0,
      batch: try int(value, "batch"),
      stepSeconds: try double(value, "step_seconds"),
      computeSeconds: try double(value, "compute_seconds"),
      commSeconds: try double(value, "comm_seconds"),
      samplesPerSecond: try double(value, "samples_per_second"),
      time: try double(value, "time"))
  }

  private static func chunk(_ value: JSON) throws(DecodeError) -> (index: Int, points: [Point]) {
    let fields = try array(value, "fields").map { $0.stringValue ?? "" }
    func column(_ name: String) throws(DecodeError) -> Int {
      guard let index = fields.firstIndex(of: name) else {
        throw DecodeError("the series has no field '\(name)'")
      }
      return index
    }
    let time = try column("time")
    let batch = try column("batch")
    let stepSeconds = try column("step_seconds")
    var points: [Point] = []
    for row in try array(value, "points") {
      let numbers = (row.arrayValue ?? []).map(\.doubleValue)
      guard numbers.count == fields.count else {
        throw DecodeError("a point has \(numbers.count) values for \(fields.count) fields")
      }
      let values = numbers.map { $0 ?? .nan }
      points.append(
        Point(
          time: values[time], batch: Int(exactly: values[batch].rounded()) ?? 0,
          stepSeconds: values[stepSeconds]))
    }
    return (try int(value, "chunk"), points)
  }

  private static func planChanges(_ value: JSON) throws(DecodeError) -> [PlanChange] {
    guard let entries = value.arrayValue else {
      throw DecodeError("expected a list of plan changes")
    }
    var changes: [PlanChange] = []
    for entry in entries {
      func ints(_ name: String) throws(DecodeError) -> [Int] {
        try array(entry, name).map { $0.intValue ?? 0 }
      }
      changes.append(
        PlanChange(
          step: try int(entry, "step"), epoch: try int(entry, "epoch"),
          iteration: try int(entry, "iteration"), old: try ints("old"),
          new: try ints("new"),
          secondsPerSample: try array(entry, "seconds_per_sample").map {
            $0.doubleValue ?? 0
          },
          time: try double(entry, "time")))
    }
    return changes
  }
}

extension JSON {
  /// The member `name` of an object; nil for other values or a missing member.
  subscript(_ name: String) -> JSON? {
    guard case .object(let members) = self else { return nil }
    return members.first { $0.0 == name }?.1
  }

  var doubleValue: Double? {
    if case .number(let value) = self { return value }
    return nil
  }

  var intValue: Int? {
    guard let value = doubleValue, value == value.rounded(), abs(value) < 1e15 else { return nil }
    return Int(value)
  }

  var stringValue: String? {
    if case .string(let value) = self { return value }
    return nil
  }

  var arrayValue: [JSON]? {
    if case .array(let values) = self { return values }
    return nil
  }
}
