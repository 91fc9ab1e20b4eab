import Glibc
import KaitianOutput
import KaitianPOSIX
import KaitianStore

/// An error of `kaitian monitor` or of the job record, saying what to check.
package struct MonitorError: Error, CustomStringConvertible {
  package let description: String
  package init(_ description: String) { self.description = description }
}

/// Reads a job's `monitor/` keys from its live store or from the snapshot `kaitian run` saves.
package enum MonitorSource {
  /// Name of the snapshot file in the log directory, written when the job ends.
  package static let snapshotFile = "monitor.json"

  /// The `monitor/` values of `store` (series chunks only if `series`). A value that is not
  /// JSON is reported in `problems` instead of failing the whole read.
  package static func read(store: any KeyValueStore, series: Bool) throws(StoreError) -> (
    values: [String: JSON], problems: [String]
  ) {
    var values: [String: JSON] = [:]
    var problems: [String] = []
    for key in try store.keys(prefix: MonitorSnapshot.prefix)
    where series || !key.hasPrefix(MonitorSnapshot.seriesPrefix) {
      guard let bytes = try store.tryGet(key: key) else { continue }  // deleted meanwhile
      do {
        values[key] = try JSON.parse(bytes)
      } catch {
        problems.append("\(key): \(error)")
      }
    }
    return (values, problems)
  }

  /// The snapshot document: `{"job_id": ..., "saved": UNIX_SECONDS, "keys": {KEY: VALUE}}`.
  package static func snapshotDocument(jobID: String, values: [String: JSON], saved: Double) -> JSON
  {
    .object([
      ("job_id", .string(jobID)), ("saved", .number(saved)),
      ("keys", .object(values.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })),
    ])
  }

  /// The values of a snapshot file written by `kaitian run`.
  package static func readSnapshot(path: String) throws(MonitorError) -> [String: JSON] {
    let document: JSON
    do {
      document = try JSON.parse(try TextFile.read(path))
    } catch let error as MonitorError {
      throw error
    } catch {
      throw MonitorError("\(path) is not a monitor snapshot: \(error)")
    }
    guard case .object(let members)? = document["keys"] else {
      throw MonitorError("\(path) is not a monitor snapshot: it has no \"keys\" object")
    }
    return Dictionary(members, uniquingKeysWith: { _, last in last })
  }
}

/// Seconds since the Unix epoch, the clock the workers' `time` fields use.
package enum WallClock {
  package static func now() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_REALTIME, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
  }
}
