import KaitianOutput

/// What `kaitian monitor` knows about a job, decoded from its `monitor/` keys (docs/CLI.md):
/// the job record `kaitian run` writes, each worker's latest sample and time series (written
/// by python/kaitian/telemetry.py), and the plan changes.
///
/// A value that cannot be decoded is skipped and named in `problems`, so one bad writer does
/// not hide the rest of the job.
package struct MonitorSnapshot {
  package struct RankInfo: Decodable {
    package var rank: Int
    package var kind: String
  }

  package struct Job: Decodable {
    package var jobID: String
    package var worldSize: Int
    package var started: Double
    package var state: String
    package var ended: Double?
    package var failure: String?
    package var ranks: [RankInfo]
    package var isRunning: Bool { state == "running" }

    package enum CodingKeys: String, CodingKey {
      case jobID = "job_id"
      case worldSize = "world_size"
      case started, state, ended, failure, ranks
    }
  }

  package struct Sample: Decodable {
    package var rank: Int
    package var kind: String
    package var host: String
    package var pid: Int
    package var step: Int
    package var epoch: Int
    package var batch: Int
    package var stepSeconds: Double
    package var computeSeconds: Double
    package var commSeconds: Double
    package var samplesPerSecond: Double
    package var time: Double

    package enum CodingKeys: String, CodingKey {
      case rank, kind, host, pid, step, epoch, batch, time
      case stepSeconds = "step_seconds"
      case computeSeconds = "compute_seconds"
      case commSeconds = "comm_seconds"
      case samplesPerSecond = "samples_per_second"
    }

    /// Host, pid and epoch are optional (older workers did not write them).
    package init(from decoder: any Decoder) throws {
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
  package struct Point {
    package var time: Double
    package var batch: Int
    package var stepSeconds: Double
  }

  /// One chunk of a rank's series as a worker writes it: named columns, then rows of numbers
  /// (null where a value was not finite).
  package struct SeriesChunk: Decodable {
    package var chunk: Int
    package var fields: [String]
    package var points: [[Double?]]

    package func decodedPoints() throws(DecodeError) -> [Point] {
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

  package struct PlanChange: Decodable {
    package var step: Int
    package var epoch: Int
    package var iteration: Int
    package var old: [Int]
    package var new: [Int]
    package var secondsPerSample: [Double]
    package var time: Double

    package enum CodingKeys: String, CodingKey {
      case step, epoch, iteration, old, new, time
      case secondsPerSample = "seconds_per_sample"
    }
  }

  /// What the job gained over its fastest group alone, as the training script measured it
  /// (`monitor/gain`, written once at the end): throughputs in samples per second.
  package struct Gain: Decodable {
    package var fastestGroup: String
    package var fastestGroupAlone: Double
    package var ideal: Double
    package var achieved: Double
    package var overFastestGroup: Double {
      fastestGroupAlone > 0 ? achieved / fastestGroupAlone : .nan
    }
    package var ofIdeal: Double { ideal > 0 ? achieved / ideal : .nan }

    package enum CodingKeys: String, CodingKey {
      case fastestGroup = "fastest_group"
      case fastestGroupAlone = "fastest_group_alone"
      case ideal, achieved
    }
  }

  package static let prefix = "monitor/"
  package static let gainKey = "monitor/gain"
  package static let jobKey = "monitor/job"
  package static let planKey = "monitor/plan"
  package static let rankPrefix = "monitor/rank/"
  package static let seriesPrefix = "monitor/series/"

  package var job: Job?
  package var samples: [Int: Sample] = [:]
  package var series: [Int: [Point]] = [:]
  package var planChanges: [PlanChange] = []
  package var gain: Gain?
  package var problems: [String] = []

  /// Decodes every `monitor/` key of `values`; other keys are ignored.
  package init(values: [String: JSON]) {
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
  package var ranks: [Int] {
    Set((job?.ranks.map(\.rank) ?? []) + Array(samples.keys) + Array(series.keys)).sorted()
  }

  package func kind(of rank: Int) -> String {
    job?.ranks.first { $0.rank == rank }?.kind ?? samples[rank]?.kind ?? "?"
  }

  /// The batch of every rank with a sample, summed: the global batch of the latest plan.
  package var globalBatch: Int { samples.values.reduce(0) { $0 + $1.batch } }

  package var totalSamplesPerSecond: Double {
    samples.values.reduce(0) { $0 + $1.samplesPerSecond }
  }

  // MARK: Decoding

  package struct DecodeError: Error, CustomStringConvertible {
    package let description: String
    package init(_ description: String) { self.description = description }
  }
}
