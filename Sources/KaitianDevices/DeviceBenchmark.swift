import Foundation
import Glibc
import KaitianLaunch
import KaitianOutput

/// `kaitian devices --bench`: times the built-in workload (python -m kaitian.device_bench) on
/// every device of this host, one device at a time, and turns the times into the paper's
/// scores, score_i = t_min / t_i (the fastest device scores 1).
///
/// Why through Python: the scores should rank devices as training with torch will, on the
/// vendor's own torch kernels; a Swift kernel would measure something no job runs.
package struct DeviceBenchmark {
  /// One device's figure, or why there is none.
  package struct Measurement: Equatable {
    package var device: String
    package var secondsPerSample: Double?
    package var problem: String?
    package var score: Double?
  }

  package var python: String
  package var seconds: Double
  package var timeoutSeconds: Double

  package init(python: String, seconds: Double, timeoutSeconds: Double) {
    self.python = python
    self.seconds = seconds
    self.timeoutSeconds = timeoutSeconds
  }

  /// Measures `devices` ("cpu", "cuda:0", ...) in order; `progress` gets a line per device.
  package func measure(_ devices: [String], progress: (String) -> Void) -> [Measurement] {
    var results: [Measurement] = []
    for (number, device) in devices.enumerated() {
      progress(
        "benchmarking \(device) (\(number + 1)/\(devices.count), about \(Int(seconds) + 3) s)")
      let arguments = [
        "-m", "kaitian.device_bench", "--device", device, "--seconds", "\(seconds)", "--json",
      ]
      switch ToolOutput.run(python, arguments: arguments, timeoutSeconds: timeoutSeconds) {
      case .success(let text):
        if let value = Self.secondsPerSample(in: text), value > 0 {
          results.append(Measurement(device: device, secondsPerSample: value))
        } else {
          results.append(
            Measurement(
              device: device, problem: "unexpected output from \(python): \(text.prefix(200))"))
        }
      case .failure(let problem):
        results.append(
          Measurement(
            device: device,
            problem:
              "\(problem.description); see `\(python) -m kaitian.device_bench --device \(device)`"))
      }
    }
    return Self.scored(results)
  }

  /// Fills in score = t_min / t for every measured device.
  package static func scored(_ results: [Measurement]) -> [Measurement] {
    guard let fastest = results.compactMap(\.secondsPerSample).min() else { return results }
    return results.map { result in
      var scored = result
      scored.score = result.secondsPerSample.map { fastest / $0 }
      return scored
    }
  }

  /// The seconds per sample in kaitian.device_bench's JSON line; nil for anything else.
  package static func secondsPerSample(in text: String) -> Double? {
    (try? JSON.parse(text))?["seconds_per_sample"]?.doubleValue
  }

  /// The scores document kept for later jobs: {"host", "measured", "workload", "devices": [...]}.
  package static func document(_ results: [Measurement], host: String, measured: Int) -> JSON {
    .object([
      ("host", .string(host)), ("measured_unix", .number(Double(measured))),
      ("workload", .string("kaitian.device_bench (small CNN, 3x32x32, batch 32)")),
      ("devices", .array(results.map(json))),
    ])
  }

  package static func json(_ result: Measurement) -> JSON {
    var members: [(String, JSON)] = [("device", .string(result.device))]
    if let seconds = result.secondsPerSample {
      members += [
        ("seconds_per_sample", .number(seconds)), ("samples_per_second", .number(1 / seconds)),
        ("score", result.score.map { .number($0) } ?? .null),
      ]
    } else {
      members.append(("error", .string(result.problem ?? "not measured")))
    }
    return .object(members)
  }

  package static func table(_ results: [Measurement]) -> String {
    var rows = [["DEVICE", "SAMPLES/S", "MS/SAMPLE", "SCORE"]]
    for result in results {
      guard let seconds = result.secondsPerSample, let score = result.score else {
        rows.append([result.device, "-", "-", "failed: \(result.problem ?? "not measured")"])
        continue
      }
      rows.append([
        result.device, String(format: "%.1f", 1 / seconds), String(format: "%.3f", 1e3 * seconds),
        String(format: "%.3f", score),
      ])
    }
    return AlignedColumns.render(rows)
  }

  /// Where scores are kept unless --scores-file says otherwise.
  package static func defaultScoresFile() -> String {
    if let cache = getenv("XDG_CACHE_HOME").map({ String(cString: $0) }), !cache.isEmpty {
      return "\(cache)/kaitian/device-scores.json"
    }
    let home = getenv("HOME").map { String(cString: $0) } ?? "."
    return "\(home)/.cache/kaitian/device-scores.json"
  }

  /// The interpreter to run the benchmark with: KAITIAN_PYTHON, a ./.venv, else python3.
  package static func defaultPython() -> String {
    if let chosen = getenv("KAITIAN_PYTHON").map({ String(cString: $0) }), !chosen.isEmpty {
      return chosen
    }
    if access(".venv/bin/python", X_OK) == 0 { return ".venv/bin/python" }
    return "python3"
  }
}
