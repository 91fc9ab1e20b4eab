import Glibc
import KaitianPOSIX
import Testing

@testable import KaitianCLI
@testable import KaitianDevices
@testable import KaitianOutput

/// `kaitian devices --bench`: scores from the workload's figures, the saved document, and the
/// command end to end with a stand-in interpreter (the real one is tested by pytest:
/// python/tests/test_device_bench.py).
@Suite("kaitian devices --bench")
struct DeviceBenchmarkTests {
  @Test func scoresAreFastestOverEach() {
    let scored = DeviceBenchmark.scored([
      .init(device: "cpu", secondsPerSample: 0.004),
      .init(device: "cuda:0", secondsPerSample: 0.001),
      .init(device: "mlu:0", problem: "exited with status 2"),
    ])
    #expect(scored.map(\.score) == [0.25, 1.0, nil])
    #expect(DeviceBenchmark.scored([.init(device: "cpu", problem: "x")]).map(\.score) == [nil])
  }

  @Test func readsTheFigureFromTheWorkloadsJSON() {
    let line = #"{"device": "cpu", "seconds_per_sample": 0.0010750678927081482, "batch": 32}"#
    #expect(DeviceBenchmark.secondsPerSample(in: line) == 0.0010750678927081482)
    #expect(DeviceBenchmark.secondsPerSample(in: #"{"x": 1e-3}"#) == nil)
    #expect(DeviceBenchmark.secondsPerSample(in: "garbage") == nil)
    #expect(
      DeviceBenchmark.secondsPerSample(in: #""seconds_per_sample": "no""#) == nil
    )
  }

  /// A stand-in for `python -m kaitian.device_bench`: answers like the real one, or fails.
  private func interpreter(printing body: String) throws -> String {
    var template = Array("/tmp/kaitian-fake-python-XXXXXX".utf8CString)
    let directory = String(cString: mkdtemp(&template))
    let path = "\(directory)/python"
    try TextFile.write(path, Array("#!/bin/sh\n\(body)\n".utf8), mode: 0o755)
    return path
  }

  @Test func savesScoresAndPrintsThem() throws {
    let python = try interpreter(
      printing: #"echo '{"device": "cpu", "seconds_per_sample": 0.002, "batch": 32}'"#)
    let scores = "\(python).d/scores.json"
    let child = try ChildProcess(
      "kaitian", ["devices", "--bench", "--python", python, "--scores-file", scores, "--json"])
    #expect(child.wait(seconds: 60) == 0, "\(child.errors)")
    let device = try JSON.parse(child.output)["devices"]?.arrayValue?.first
    #expect(
      device?["device"]?.stringValue == "cpu" && device?["seconds_per_sample"]?.doubleValue == 0.002
    )
    #expect(device?["samples_per_second"]?.doubleValue == 500 && device?["score"]?.doubleValue == 1)
    #expect(
      try JSON.parse(ChildProcess.read(scores))["devices"]?.arrayValue?.first?["score"]?.doubleValue
        == 1)
    #expect(child.errors.contains("benchmarking cpu (1/1"))
  }

  @Test func aFailingWorkloadIsReportedAndNothingSaved() throws {
    let python = try interpreter(printing: "echo 'no torch here' >&2; exit 2")
    let scores = "\(python).d/scores.json"
    let child = try ChildProcess(
      "kaitian", ["devices", "--bench", "--python", python, "--scores-file", scores])
    #expect(child.wait(seconds: 60) == 1)
    #expect(child.output.contains("failed: exited with status 2"))
    #expect(child.output.contains("nothing measured; no scores saved"))
    #expect(access(scores, F_OK) != 0)
  }

  @Test func benchOptionsNeedBench() throws {
    let child = try ChildProcess("kaitian", ["devices", "--scores-file", "/tmp/x.json"])
    #expect(child.wait(seconds: 30) == 64)
    #expect(child.errors.contains("--python and --scores-file go with --bench"))
  }
}
