/// How a planner turns measured speeds into per-rank batch sizes. Raw values are
/// `ktPlanMode_t` in include/kaitian.h.
public enum PlanMode: Int32, Sendable, CaseIterable {
  /// `batch` is the global batch, split in proportion to throughput: the optimization problem
  /// (learning rate, schedule) stays the same whatever hardware the job runs on.
  case fixedGlobal = 0
  /// The paper's rule: the fastest rank keeps `batch` and rank i gets `batch * t_min / t_i`, so
  /// the global batch grows with the hardware mix.
  case paper = 1
}

/// Per-rank batch sizes from per-rank compute times, the load-adaptive mechanism of the paper.
///
/// A slower device gets proportionally fewer samples so that every rank finishes its step at
/// about the same time and none waits for another in the gradient allreduce. Planning is a pure
/// function of the inputs, evaluated in rank order, so every rank that is given the same times
/// computes the same plan without further communication.
public struct BatchPlanner: Sendable, Equatable {
  /// The largest batch planned: the arithmetic runs in Double, exact for integers up to 2^53.
  public static let maximumBatch = 1 << 53

  public let ranks: Int
  /// The global batch (`.fixedGlobal`) or the fastest rank's batch (`.paper`).
  public let batch: Int
  public let mode: PlanMode
  /// Each rank's memory limit in samples; nil means no limit.
  public let maxBatch: [Int?]

  /// Checks the configuration once, so that `plan` fails only on bad measurements.
  public init(
    ranks: Int, batch: Int, mode: PlanMode = .fixedGlobal, maxBatch: [Int?]? = nil
  ) throws(KaitianError) {
    guard ranks >= 1 else {
      throw .invalidArgument("nranks is \(ranks); a plan needs at least one rank")
    }
    let maxBatch = maxBatch ?? Array(repeating: nil, count: ranks)
    guard maxBatch.count == ranks else {
      throw .invalidArgument(
        "maxBatch has \(maxBatch.count) entries for \(ranks) ranks; give one per rank (nil: no limit)"
      )
    }
    guard batch >= 1, batch <= Self.maximumBatch else {
      throw .invalidArgument("batch is \(batch); it must be between 1 and 2^53")
    }
    for (rank, limit) in maxBatch.enumerated() {
      if let limit, limit < 1 {
        throw .invalidArgument(
          "maxBatch[\(rank)] is \(limit); every rank trains on at least 1 sample, so a limit "
            + "must be at least 1 (or no limit)")
      }
    }
    if mode == .fixedGlobal {
      guard batch >= ranks else {
        throw .invalidArgument(
          "global batch \(batch) is smaller than the \(ranks) ranks; every rank needs at least "
            + "1 sample, so use a global batch of at least \(ranks) or fewer ranks")
      }
      // A rank without a limit can take any excess, so only all-limited jobs can fall short.
      let limits = maxBatch.compactMap { $0 }
      if limits.count == ranks {
        let capacity = limits.reduce(0) { total, limit in
          let (sum, overflow) = total.addingReportingOverflow(limit)
          return overflow ? Int.max : sum
        }
        guard capacity >= batch else {
          throw .invalidArgument(
            "the memory limits (maxBatch) hold \(capacity) samples in all, less than the global "
              + "batch \(batch); lower the batch or raise the limits")
        }
      }
    }
    self.ranks = ranks
    self.batch = batch
    self.mode = mode
    // A limit above the batch never binds; clamping keeps every value exact in Double.
    self.maxBatch = maxBatch.map { $0.map { min($0, batch) } }
  }

  /// The paper's scores: score_i = t_min / t_i, 1 for the fastest rank and in (0, 1] for all.
  public static func scores(secondsPerSample: [Double]) throws(KaitianError) -> [Double] {
    for (rank, seconds) in secondsPerSample.enumerated() {
      guard seconds.isFinite, seconds > 0 else {
        throw .invalidArgument(
          "secondsPerSample[\(rank)] is \(seconds); it must be a positive, finite compute time "
            + "per sample (measure a few steps of compute, not 0)")
      }
    }
    guard let fastest = secondsPerSample.min() else {
      throw .invalidArgument("secondsPerSample is empty; give one time per rank")
    }
    let scores = secondsPerSample.map { fastest / $0 }
    // A score of 0 would give a rank no weight at all: only times some 10^308 apart do that.
    if let rank = scores.firstIndex(of: 0) {
      throw .invalidArgument(
        "secondsPerSample[\(rank)] is \(secondsPerSample[rank]), too far from the fastest "
          + "rank's \(fastest) to plan with; check the units of the measurements")
    }
    return scores
  }

  /// The batch of every rank, in rank order, from each rank's compute time per sample.
  public func plan(secondsPerSample: [Double]) throws(KaitianError) -> [Int] {
    try plan(secondsPerSample: secondsPerSample, fixedSeconds: Array(repeating: 0, count: ranks))
  }

  /// The batch of every rank from a cost model of its step: `fixedSeconds[i]` whatever the
  /// batch, plus `secondsPerSample[i]` per sample.
  ///
  /// Why the fixed part: a step also costs what does not grow with the batch (kernel launches,
  /// the optimizer, the framework's own work), and the smaller a rank's batch, the more of its
  /// step that is. A plan from seconds per sample measured at one batch size counts it as
  /// per-sample work and so gives slow ranks too much: two emulated devices at 0.3 and 0.15 of
  /// a core measured 1.8x apart per sample at 16 samples and were planned [20, 20, 12, 12],
  /// where equal step times need [21, 21, 11, 11]. With the fixed part the plan equalises the
  /// predicted step times themselves. All zero, it is exactly `plan(secondsPerSample:)`.
  public func plan(secondsPerSample: [Double], fixedSeconds: [Double]) throws(KaitianError)
    -> [Int]
  {
    guard secondsPerSample.count == ranks else {
      throw .invalidArgument(
        "secondsPerSample has \(secondsPerSample.count) entries for \(ranks) ranks")
    }
    guard fixedSeconds.count == ranks else {
      throw .invalidArgument("fixedSeconds has \(fixedSeconds.count) entries for \(ranks) ranks")
    }
    for (rank, seconds) in fixedSeconds.enumerated() {
      guard seconds.isFinite, seconds >= 0 else {
        throw .invalidArgument(
          "fixedSeconds[\(rank)] is \(seconds); it must be a finite time of at least 0 (the part "
            + "of a step that does not grow with the batch)")
      }
    }
    let scores = try Self.scores(secondsPerSample: secondsPerSample)
    // Each rank's fixed time in samples of its own work: the offset of its share.
    let offsets = zip(fixedSeconds, secondsPerSample).map { $0 / $1 }
    switch mode {
    case .paper:
      // The fastest rank (the shortest step at `batch`) keeps the batch; every other rank gets
      // the batch it finishes in the same time.
      // With no fixed times this is batch * t_min / t_i, and never more than the batch.
      let step = { (rank: Int) in fixedSeconds[rank] + Double(self.batch) * secondsPerSample[rank] }
      let fastest = (0..<ranks).min { step($0) < step($1) } ?? 0
      return (0..<ranks).map { rank in
        let share =
          Double(batch) * (secondsPerSample[fastest] / secondsPerSample[rank])
          + (fixedSeconds[fastest] - fixedSeconds[rank]) / secondsPerSample[rank]
        let planned = max(1, Int(min(share, Double(batch)).rounded()))
        return min(planned, maxBatch[rank] ?? planned)
      }
    case .fixedGlobal:
      return splitGlobalBatch(weights: scores, offsets: offsets)
    }
  }

  /// The global batch in proportion to `weights` after `offsets`, every rank within [1, limit].
  ///
  /// The real-valued shares are x_i = clamp(lambda * w_i - o_i, 1, limit_i) with lambda chosen
  /// so they sum to the batch (lambda is then the common step time, in units of the fastest
  /// rank's time per sample): ranks pinned at 1 or at their limit give their excess or
  /// shortfall to the others in proportion to speed. The integer batches are the floors, and
  /// the samples left go to the ranks whose predicted steps grow least (see below).
  private func splitGlobalBatch(weights: [Double], offsets: [Double]) -> [Int] {
    let upper = maxBatch.map { $0.map(Double.init) ?? .infinity }
    let target = Double(batch)
    func shares(_ lambda: Double) -> [Double] {
      (0..<ranks).map { (rank: Int) -> Double in
        min(max(lambda * weights[rank] - offsets[rank], 1), upper[rank])
      }
    }
    func total(_ lambda: Double) -> Double { shares(lambda).reduce(0, +) }

    // The total is continuous, non-decreasing and piecewise linear in lambda, with kinks where
    // a rank leaves its lower bound or reaches its limit: find the piece that holds the batch.
    // At lambda = 0 every rank is at its lower bound (offsets are never negative).
    let kinks = (0..<ranks).flatMap { (rank: Int) -> [Double] in
      let (offset, weight) = (offsets[rank], weights[rank])
      return [(1 + offset) / weight, (upper[rank] + offset) / weight]
    }
    .filter(\.isFinite).sorted()
    var start = 0.0
    var startTotal = total(0)
    var lambda: Double?
    for kink in kinks {
      let kinkTotal = total(kink)
      if kinkTotal >= target {
        lambda =
          kinkTotal > startTotal
          ? start + (target - startTotal) * (kink - start) / (kinkTotal - startTotal) : kink
        break
      }
      start = kink
      startTotal = kinkTotal
    }
    // Past the last kink only unlimited ranks grow; init guarantees there is one if needed.
    let exact = shares(
      lambda
        ?? {
          let slope = (0..<ranks).filter { upper[$0].isInfinite }.map { weights[$0] }
            .reduce(0, +)
          return start + (target - startTotal) / slope
        }())

    let floors = (0..<ranks).map { rank in
      min(max(Int(exact[rank].rounded(.down)), 1), maxBatch[rank] ?? batch)
    }
    var batches = floors
    // The samples the floors leave go one each to the ranks whose predicted step, with the extra
    // sample, is shortest: the plan minimises the slowest rank's step, which sets the job's.
    // (Largest remainder would give a slow rank the sample as soon as its share's fraction is
    // the largest, though one sample costs it more time than it costs a fast rank.) Ties go to
    // the lower rank; a rank takes a second extra sample only when every other rank has one.
    func step(_ rank: Int, _ size: Int) -> Double { (Double(size) + offsets[rank]) / weights[rank] }
    func sooner(_ a: Int, _ b: Int) -> Bool {
      let key = { (rank: Int) in
        (batches[rank] > floors[rank] ? 1 : 0, step(rank, batches[rank] + 1))
      }
      let (keyA, keyB) = (key(a), key(b))
      return keyA < keyB || (keyA == keyB && a < b)
    }
    // Normally the floors fall short by fewer samples than there are ranks; rounding error in
    // lambda can also leave them a sample over, which the second loop takes back from the rank
    // with the longest predicted step (the higher rank on a tie).
    var missing = batch - batches.reduce(0, +)
    while missing > 0,
      let rank = (0..<ranks).filter({ batches[$0] < maxBatch[$0] ?? batch }).min(by: sooner)
    {
      batches[rank] += 1
      missing -= 1
    }
    func shorter(_ a: Int, _ b: Int) -> Bool {
      let (stepA, stepB) = (step(a, batches[a]), step(b, batches[b]))
      return stepA < stepB || (stepA == stepB && a < b)
    }
    while missing < 0, let rank = (0..<ranks).filter({ batches[$0] > 1 }).max(by: shorter) {
      batches[rank] -= 1
      missing += 1
    }
    return batches
  }
}
