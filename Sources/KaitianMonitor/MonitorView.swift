import KaitianOutput

/// One screen of `kaitian monitor`: the job line, a table row per rank, and the last plan
/// changes; or the same as one JSON document (`--once --json`, schema in docs/CLI.md).
package struct MonitorView {
  /// Where the data came from, shown in the header so a saved snapshot is never mistaken for a
  /// live job.
  package enum Origin {
    case live(store: String)
    case snapshot(path: String, reason: String)
  }

  package let snapshot: MonitorSnapshot
  package let origin: Origin
  /// The wall clock the ages are measured against; a finished job's end.
  package let now: Double
  package var planChangesShown = 5

  package init(snapshot: MonitorSnapshot, origin: Origin, now: Double) {
    self.snapshot = snapshot
    self.origin = origin
    // A finished job's samples are as old as the job is; age against the end says more.
    self.now = snapshot.job.flatMap { $0.isRunning ? nil : $0.ended } ?? now
  }

  package struct Row {
    package var rank: Int
    package var kind: String
    package var sample: MonitorSnapshot.Sample?
    package var share: Double?
    package var commFraction: Double?
    package var age: Double?
  }

  package var rows: [Row] {
    let global = snapshot.globalBatch
    return snapshot.ranks.map { rank in
      let sample = snapshot.samples[rank]
      return Row(
        rank: rank, kind: snapshot.kind(of: rank), sample: sample,
        share: sample.flatMap { global > 0 ? Double($0.batch) / Double(global) : nil },
        commFraction: sample.flatMap {
          $0.stepSeconds > 0 ? $0.commSeconds / $0.stepSeconds : nil
        },
        age: sample.map { max(0, now - $0.time) })
    }
  }

  // MARK: Text

  package var text: String {
    var lines: [String] = [header]
    switch origin {
    case .live(let store): lines.append("store \(store) (live)")
    case .snapshot(let path, let reason): lines.append("\(reason): showing the snapshot \(path)")
    }
    if let failure = snapshot.job?.failure { lines.append("failure: \(failure)") }
    lines.append("")
    var table = [["RANK", "KIND", "BATCH", "SHARE", "STEP ms", "SAMPLES/s", "COMM", "STEP", "AGE"]]
    for row in rows {
      guard let sample = row.sample else {
        table.append(["\(row.rank)", row.kind, "-", "-", "-", "-", "-", "-", "no sample yet"])
        continue
      }
      table.append([
        "\(row.rank)", row.kind, "\(sample.batch)", row.share.map { Self.percent($0) } ?? "-",
        Self.fixed(sample.stepSeconds * 1000, 1), Self.fixed(sample.samplesPerSecond, 1),
        row.commFraction.map { Self.percent($0) } ?? "-", "\(sample.step)",
        Self.duration(row.age ?? 0),
      ])
    }
    lines += AlignedColumns.lines(table, rightAligned: [2, 3, 4, 5, 6, 7, 8])
    lines.append(
      "total \(Self.fixed(snapshot.totalSamplesPerSecond, 1)) samples/s, global batch "
        + "\(snapshot.globalBatch)")
    if let gain = snapshot.gain { lines.append(Self.gainLine(gain)) }
    let changes = snapshot.planChanges
    if changes.isEmpty {
      lines.append("no plan changes")
    } else {
      let shown = changes.suffix(planChangesShown)
      lines.append(
        "plan changes (\(shown.count == changes.count ? "all \(changes.count)" : "last \(shown.count) of \(changes.count)")):"
      )
      for change in shown {
        lines.append(
          "  step \(change.step) epoch \(change.epoch) iteration \(change.iteration): "
            + "\(Self.list(change.old)) -> \(Self.list(change.new)), "
            + "\(Self.duration(max(0, now - change.time))) ago")
      }
    }
    for problem in snapshot.problems { lines.append("unreadable: \(problem)") }
    return lines.joined(separator: "\n")
  }

  /// The job's gain in words; the plot's subtitle too.
  package static func gainLine(_ gain: MonitorSnapshot.Gain) -> String {
    "gain: \(fixed(gain.overFastestGroup, 2))x the fastest group (\(gain.fastestGroup)) alone, "
      + "\(fixed(100 * gain.ofIdeal, 0))% of all groups together (\(fixed(gain.achieved, 1)) "
      + "samples/s against \(fixed(gain.fastestGroupAlone, 1)) and \(fixed(gain.ideal, 1)), "
      + "by the compute speeds measured before training)"
  }

  private var header: String {
    guard let job = snapshot.job else {
      return "job ? (no monitor/job key yet: started by kaitian run?)"
    }
    let ran =
      job.ended.map { "ran \(Self.duration($0 - job.started))" }
      ?? "running for \(Self.duration(max(0, now - job.started)))"
    return "job \(job.jobID)  \(job.state)  \(job.worldSize) ranks  \(ran)"
  }

  // MARK: JSON

  package var json: JSON {
    let job: JSON =
      snapshot.job.map { job in
        .object([
          ("job_id", .string(job.jobID)), ("state", .string(job.state)),
          ("world_size", .number(Double(job.worldSize))), ("started", .number(job.started)),
          ("ended", job.ended.map { .number($0) } ?? .null),
          ("failure", job.failure.map { .string($0) } ?? .null),
        ])
      } ?? .null
    let source: [(String, JSON)] =
      switch origin {
      case .live(let store): [("source", .string("live")), ("store", .string(store))]
      case .snapshot(let path, _): [("source", .string("snapshot")), ("snapshot", .string(path))]
      }
    let ranks = rows.map { row -> JSON in
      let sample = row.sample
      func number(_ value: Double?) -> JSON { value.map { .number($0) } ?? .null }
      return .object([
        ("rank", .number(Double(row.rank))), ("kind", .string(row.kind)),
        ("host", sample.map { .string($0.host) } ?? .null),
        ("pid", number(sample.map { Double($0.pid) })),
        ("step", number(sample.map { Double($0.step) })),
        ("epoch", number(sample.map { Double($0.epoch) })),
        ("batch", number(sample.map { Double($0.batch) })), ("share", number(row.share)),
        ("step_seconds", number(sample?.stepSeconds)),
        ("compute_seconds", number(sample?.computeSeconds)),
        ("comm_seconds", number(sample?.commSeconds)), ("comm_fraction", number(row.commFraction)),
        ("samples_per_second", number(sample?.samplesPerSecond)),
        ("age_seconds", number(row.age)),
      ])
    }
    let changes = snapshot.planChanges.map { change -> JSON in
      .object([
        ("step", .number(Double(change.step))), ("epoch", .number(Double(change.epoch))),
        ("iteration", .number(Double(change.iteration))),
        ("old", .array(change.old.map { .number(Double($0)) })),
        ("new", .array(change.new.map { .number(Double($0)) })),
        ("seconds_per_sample", .array(change.secondsPerSample.map { .number($0) })),
        ("time", .number(change.time)),
      ])
    }
    return .object(
      source + [
        ("job", job), ("total_samples_per_second", .number(snapshot.totalSamplesPerSecond)),
        ("global_batch", .number(Double(snapshot.globalBatch))), ("ranks", .array(ranks)),
        ("plan_changes", .array(changes)),
        (
          "gain",
          snapshot.gain.map { gain in
            .object([
              ("fastest_group", .string(gain.fastestGroup)),
              ("fastest_group_alone", .number(gain.fastestGroupAlone)),
              ("ideal", .number(gain.ideal)), ("achieved", .number(gain.achieved)),
              ("over_fastest_group", .number(gain.overFastestGroup)),
              ("of_ideal", .number(gain.ofIdeal)),
            ])
          } ?? .null
        ),
        ("problems", .array(snapshot.problems.map { .string($0) })),
      ])
  }

  // MARK: Formatting

  /// `value` with `decimals` decimals; "-" when it is not a number (no sample yet).
  package static func fixed(_ value: Double, _ decimals: Int) -> String {
    value.isFinite ? String(format: "%.*f", Int32(decimals), value) : "-"
  }

  package static func percent(_ fraction: Double) -> String { fixed(fraction * 100, 1) + "%" }

  package static func duration(_ seconds: Double) -> String {
    if seconds < 60 { return fixed(seconds, 1) + " s" }
    let whole = Int(seconds)
    if whole < 3600 { return "\(whole / 60) min \(whole % 60) s" }
    return "\(whole / 3600) h \(whole % 3600 / 60) min"
  }

  package static func list(_ values: [Int]) -> String {
    "[" + values.map(String.init).joined(separator: ", ") + "]"
  }
}
