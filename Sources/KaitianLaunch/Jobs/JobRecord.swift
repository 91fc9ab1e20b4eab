import Glibc
import KaitianAuth
import KaitianMonitor
import KaitianOutput
import KaitianPOSIX
import KaitianStore

/// What `kaitian run` leaves for `kaitian monitor`: `job.json` ({job_id, store, started}) and
/// `token` (mode 0600) in the log directory, so the monitor can find and join the live store;
/// the `monitor/job` key; and at the end `monitor.json`, a copy of every `monitor/` key saved
/// before the store stops, so a finished job can still be shown and plotted.
package struct JobRecord {
  package static let jobFile = "job.json"
  package static let tokenFile = "token"

  private let client: any KeyValueStore
  private let logDirectory: String
  private let jobID: String
  private let started: Double
  private let ranks: [JSON]
  private let worldSize: Int
  /// Only node 0 writes `monitor/job`: with several nodes, it lists node 0's ranks (every
  /// rank's own figures are under `monitor/rank/<r>` whatever its node).
  private let writesJob: Bool

  /// Writes the files and the `monitor/job` key (state "running"). job.json is private to the
  /// user like the token: a Redis store's address carries its password.
  package static func start(plan: RunPlan, store: JobStore, token: JobToken) throws -> JobRecord {
    let started = WallClock.now()
    // A reused log directory's old snapshot would make the monitor show the previous job.
    unlink("\(plan.logDirectory)/\(MonitorSource.snapshotFile)")
    try TextFile.write(
      "\(plan.logDirectory)/\(jobFile)",
      Array(
        (JSON.object([
          ("job_id", .string(plan.jobID)), ("store", .string(store.address)),
          ("started", .number(started)),
        ]).rendered + "\n").utf8), mode: 0o600)
    try TokenFile.write(token, to: "\(plan.logDirectory)/\(tokenFile)")
    let client = store.client
    let record = JobRecord(
      client: client, logDirectory: plan.logDirectory, jobID: plan.jobID, started: started,
      ranks: plan.ranks.map {
        .object([
          ("rank", .number(Double($0.rank))), ("label", .string($0.label)),
          ("kind", .string($0.kind)), ("group", .number(Double($0.group))),
        ])
      }, worldSize: plan.layout.worldSize, writesJob: plan.layout.nodeRank == 0)
    if record.writesJob {
      try client.set(
        key: MonitorSnapshot.jobKey, value: Array(record.document(state: "running").utf8))
    }
    return record
  }

  /// Marks the job ended and saves the snapshot. Problems are reported on stderr, not thrown:
  /// the job's own outcome is what `kaitian run` must report.
  package func finish(_ outcome: LocalProcessGroup.Outcome) {
    let state: String
    var failure: String?
    if let first = outcome.firstFailure {
      state = "failed"
      failure = "\(first)"
    } else if outcome.interruption != nil {
      state = "interrupted"
    } else {
      state = "succeeded"
    }
    let path = "\(logDirectory)/\(MonitorSource.snapshotFile)"
    do {
      let final = document(state: state, ended: WallClock.now(), failure: failure)
      if writesJob { try client.set(key: MonitorSnapshot.jobKey, value: Array(final.utf8)) }
      let (values, _) = try MonitorSource.read(store: client, series: true)
      let snapshot = MonitorSource.snapshotDocument(
        jobID: jobID, values: values, saved: WallClock.now())
      try TextFile.write(path, Array((snapshot.rendered + "\n").utf8))
    } catch {
      let line = Array("kaitian run: cannot save the monitor snapshot \(path): \(error)\n".utf8)
      _ = write(2, line, line.count)
    }
  }

  private func document(state: String, ended: Double? = nil, failure: String? = nil) -> String {
    var members: [(String, JSON)] = [
      ("job_id", .string(jobID)), ("world_size", .number(Double(worldSize))),
      ("started", .number(started)), ("ranks", .array(ranks)), ("state", .string(state)),
    ]
    if let ended { members.append(("ended", .number(ended))) }
    if let failure { members.append(("failure", .string(failure))) }
    return JSON.object(members).rendered
  }
}
