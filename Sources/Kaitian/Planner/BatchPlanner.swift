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
    guard secondsPerSample.count == ranks else {
      throw .invalidArgument(
        "secondsPerSample has \(secondsPerSample.count) entries for \(ranks) ranks")
    }
    let scores = try Self.scores(secondsPerSample: secondsPerSample)
    switch mode {
    case .paper:
      return zip(scores, maxBatch).map { score, limit in
        // score <= 1, so the product never exceeds the batch (and stays exact as an Int).
        let share = max(1, Int((Double(batch) * score).rounded()))
        return min(share, limit ?? share)
      }
    case .fixedGlobal:
      return splitGlobalBatch(weights: scores)
    }
  }

  /// The global batch in proportion to `weights`, every rank within [1, its limit].
  ///
  /// The real-valued shares are x_i = clamp(lambda * w_i, 1, limit_i) with lambda chosen so
  /// they sum to the batch: ranks pinned at 1 or at their limit give their excess or shortfall
  /// to the others in proportion to speed. The integer batches then follow by largest
  /// remainder, ties going to the lower rank.
  private func splitGlobalBatch(weights: [Double]) -> [Int] {
    let upper = maxBatch.map { $0.map(Double.init) ?? .infinity }
    let target = Double(batch)
    func shares(_ lambda: Double) -> [Double] {
      (0..<ranks).map { min(max(lambda * weights[$0], 1), upper[$0]) }
    }
    func total(_ lambda: Double) -> Double { shares(lambda).reduce(0, +) }

    // The total is continuous, non-decreasing and piecewise linear in lambda, with kinks where
    // a rank leaves its lower bound or reaches its limit: find the piece that holds the batch.
    let kinks = (0..<ranks).flatMap { [1 / weights[$0], upper[$0] / weights[$0]] }
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

    var batches = (0..<ranks).map { rank in
      min(max(Int(exact[rank].rounded(.down)), 1), maxBatch[rank] ?? batch)
    }
    // Largest remainder first, and on equal remainders the lower rank first.
    func before(_ a: Int, _ b: Int) -> Bool {
      let (remainderA, remainderB) = (exact[a] - Double(batches[a]), exact[b] - Double(batches[b]))
      return remainderA < remainderB || (remainderA == remainderB && a > b)
    }
    // Normally the floors fall short by fewer samples than there are ranks; rounding error in
    // lambda can also leave them a sample over, which the second loop takes back.
    var missing = batch - batches.reduce(0, +)
    while missing > 0,
      let rank = (0..<ranks).filter({ batches[$0] < maxBatch[$0] ?? batch }).max(by: before)
    {
      batches[rank] += 1
      missing -= 1
    }
    while missing < 0, let rank = (0..<ranks).filter({ batches[$0] > 1 }).min(by: before) {
      batches[rank] -= 1
      missing += 1
    }
    return batches
  }
}
