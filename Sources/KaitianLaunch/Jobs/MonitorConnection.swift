import KaitianAuth
import KaitianMonitor
import KaitianOutput
import KaitianPOSIX
import KaitianRedis
import KaitianStore

/// The monitor's way to a job: its live store, or the snapshot once the store is gone.
package final class MonitorConnection {
  private var client: (any KeyValueStore)?
  private let storeAddress: String
  private let snapshotPath: String?

  package var isSnapshot: Bool { client == nil }

  private init(client: (any KeyValueStore)?, storeAddress: String, snapshotPath: String?) {
    self.client = client
    self.storeAddress = Self.display(storeAddress)
    self.snapshotPath = snapshotPath
  }

  /// A store started otherwise (`kaitian store serve`, Redis), with the job's token.
  package static func open(store: String, token: JobToken) throws -> MonitorConnection {
    MonitorConnection(
      client: try connect(store, token: token, jobID: nil), storeAddress: store,
      snapshotPath: nil)
  }

  /// A `kaitian run` job from its log directory: its live store through job.json and the token
  /// file there, or the snapshot saved when the job ended.
  package static func open(logDirectory directory: String) throws -> MonitorConnection {
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
    let token = try JobToken.fromFile("\(directory)/\(JobRecord.tokenFile)")
    do {
      return MonitorConnection(
        client: try connect(address, token: token, jobID: job["job_id"]?.stringValue),
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
  package func read(series: Bool) throws -> (MonitorSnapshot, MonitorView.Origin) {
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

  /// The store's address as output shows it: a Redis password as ***.
  private static func display(_ address: String) -> String {
    guard case .redis(let url)? = try? StoreLocator.parse(address) else { return address }
    return "\(url)"
  }

  /// The job's live store: Kaitian's embedded one (host:port, with the token) or Redis (the
  /// job's keys under its id).
  private static func connect(
    _ address: String, token: JobToken, jobID: String?
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
        "the store at \(display(address)) refused the token from \(token.origin): it belongs to "
          + "another job (\(error))")
    case .failure(let error): throw error
    }
  }
}
