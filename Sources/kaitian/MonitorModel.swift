/// What `kaitian monitor` knows about a job, decoded from its `monitor/` keys (docs/CLI.md):
/// the job record `kaitian run` writes, each worker's latest sample and time series (written
/// by python/kaitian/telemetry.py), and the plan changes.
///
/// A value that cannot be decoded is skipped and named in `problems`, so one bad writer does
/// not hide the rest of the job.
struct MonitorSnapshot {
  struct RankInfo: Decodable {
    var rank: Int
    var kind: String
  }

  struct Job: Decodable {
    var jobID: String
    var worldSize: Int
    var started: Double
    var state: String
    var ended: Double?
    var failure: String?
    var ranks: [RankInfo]
    var isRunning: Bool { state == "running" }

    enum CodingKeys: String, CodingKey {
      case jobID = "job_id"
      case worldSize = "world_size"
      case started, state, ended, failure, ranks
    }
  }

  struct Sample: Decodable {
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

    enum CodingKeys: String, CodingKey {
      case rank, kind, host, pid, step, epoch, batch, time
      case stepSeconds = "step_seconds"
      case computeSeconds = "compute_seconds"
      case commSeconds = "comm_seconds"
      case samplesPerSecond = "samples_per_second"
    }

    /// Host, pid and epoch are optional (older workers did not write them).
    init(from decoder: any Decoder) throws {
      let fields = try decoder.container(keyedBy: CodingKeys.self)
      rank = try fields.decode(Int.self, forKey: .rank)
      kind = try fields.decode(String.self, forKey: .kind)
      host = try fields.decodeIfPresent(String.self, forKey: .host) ?? "?"
      pid = try fields.decodeIfPresent(Int.self, forKey: .pid) ?? 0
      step = try fields.decode(Int.self, forKey: .step)
      epoch = try fields.decodeIfPresent(Int.self, forKey: .epoch) ?? 0
      batch = try fields.decode(Int.self, forKey: .batch)
      stepSeconds = try fields.decode(Double.self, forKey: .stepSeconds)
      computeSeconds = try fields.decode(Double.self, forKey: .computeSeconds)
      commSeconds = try fields.decode(Double.self, forKey: .commSeconds)
      samplesPerSecond = try fields.decode(Double.self, forKey: .samplesPerSecond)
      time = try fields.decode(Double.self, forKey: .time)
    }
  }

  /// One point of a rank's series (a publish window's means): what the plots draw.
  struct Point {
    var time: Double
    var batch: Int
    var stepSeconds: Double
  }

  /// One chunk of a rank's series as a worker writes it: named columns, then rows of numbers
  /// (null where a value was not finite).
  struct SeriesChunk: Decodable {
    var chunk: Int
    var fields: [String]
    var points: [[Double?]]

    func decodedPoints() throws(DecodeError) -> [Point] {
      func column(_ name: String) throws(DecodeError) -> Int {
        guard let index = fields.firstIndex(of: name) else {
          throw DecodeError("the series has no field '\(name)'")
        }
        return index
      }
      let time = try column("time")
      let batch = try column("batch")
      let stepSeconds = try column("step_seconds")
      var result: [Point] = []
      for row in points {
        guard row.count == fields.count else {
          throw DecodeError("a point has \(row.count) values for \(fields.count) fields")
        }
        let values = row.map { $0 ?? .nan }
        result.append(
          Point(
            time: values[time], batch: Int(exactly: values[batch].rounded()) ?? 0,
            stepSeconds: values[stepSeconds]))
      }
      return result
    }
  }

  struct PlanChange: Decodable {
    var step: Int
    var epoch: Int
    var iteration: Int
    var old: [Int]
    var new: [Int]
    var secondsPerSample: [Double]
    var time: Double

    enum CodingKeys: String, CodingKey {
      case step, epoch, iteration, old, new, time
      case secondsPerSample = "seconds_per_sample"
    }
  }

  /// What the job gained over its fastest group alone, as the training script measured it
  /// (`monitor/gain`, written once at the end): throughputs in samples per second.
  struct Gain: Decodable {
    var fastestGroup: String
    var fastestGroupAlone: Double
    var ideal: Double
    var achieved: Double
    var overFastestGroup: Double { fastestGroupAlone > 0 ? achieved / fastestGroupAlone : .nan }
    var ofIdeal: Double { ideal > 0 ? achieved / ideal : .nan }

    enum CodingKeys: String, CodingKey {
      case fastestGroup = "fastest_group"
      case fastestGroupAlone = "fastest_group_alone"
      case ideal, achieved
    }
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
          job = try value.decoded(as: Job.self)
        } else if key == Self.planKey {
          planChanges = try value.decoded(as: [PlanChange].self)
        } else if key == Self.gainKey {
          gain = try value.decoded(as: Gain.self)
        } else if key.hasPrefix(Self.rankPrefix) {
          let sample = try value.decoded(as: Sample.self)
          samples[sample.rank] = sample
        } else if key.hasPrefix(Self.seriesPrefix) {
          let parts = key.dropFirst(Self.seriesPrefix.count).split(separator: "/")
          guard parts.count == 2, let rank = Int(parts[0]) else {
            throw DecodeError("expected monitor/series/<rank>/<slot>")
          }
          let chunk = try value.decoded(as: SeriesChunk.self)
          chunks[rank, default: []].append((chunk.chunk, try chunk.decodedPoints()))
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
}
