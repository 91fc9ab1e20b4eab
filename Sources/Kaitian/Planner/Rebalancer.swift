/// Online re-balancing: per-rank compute times in, a new plan out when the speeds have moved.
///
/// Each rank's seconds per sample are smoothed by an exponential moving average, so one slow
/// step (a page fault, a neighbour's burst) does not move the plan; a new plan is proposed only
/// when some rank's batch would move by more than `hysteresis` of its current batch (and by at
/// least one sample), so noise around a constant speed does not make the plan oscillate, which
/// would cost a re-shard each time for nothing.
///
/// The rebalancer is a pure function of the calls made on it: ranks that feed it the same
/// observations (for example after an allgather of every rank's times) and propose at the same
/// steps agree on every plan without further communication. Observations of different ranks
/// are independent, so their order between ranks does not matter.
public struct Rebalancer: Sendable {
  public let planner: BatchPlanner
  /// The weight of a new observation in the moving average, in (0, 1]; 1 keeps only the last.
  public let smoothing: Double
  /// The fraction of its current batch by which some rank's batch must move for a new plan.
  public let hysteresis: Double
  /// Each rank's smoothed compute seconds per sample; nil until the rank is observed.
  public private(set) var secondsPerSample: [Double?]
  /// The last plan proposed; nil before the first proposal.
  public private(set) var current: [Int]?

  public init(
    planner: BatchPlanner, smoothing: Double, hysteresis: Double
  ) throws(KaitianError) {
    guard smoothing > 0, smoothing <= 1 else {
      throw .invalidArgument(
        "smoothing is \(smoothing); it must be in (0, 1] (the weight of each new observation, "
          + "e.g. 0.3; 1 keeps only the latest)")
    }
    guard hysteresis >= 0, hysteresis.isFinite else {
      throw .invalidArgument(
        "hysteresis is \(hysteresis); it must be a finite fraction >= 0 of a rank's batch "
          + "(e.g. 0.1; 0 re-plans on any change of a sample or more)")
    }
    self.planner = planner
    self.smoothing = smoothing
    self.hysteresis = hysteresis
    secondsPerSample = Array(repeating: nil, count: planner.ranks)
  }

  /// Rank `rank` spent `computeSeconds` of compute (not collective waits) on `samples` samples.
  public mutating func observe(
    rank: Int, computeSeconds: Double, samples: Int
  ) throws(KaitianError) {
    guard secondsPerSample.indices.contains(rank) else {
      throw .invalidArgument("rank \(rank) is not between 0 and \(planner.ranks - 1)")
    }
    guard computeSeconds.isFinite, computeSeconds > 0 else {
      throw .invalidArgument(
        "computeSeconds is \(computeSeconds) for rank \(rank); it must be a positive, finite "
          + "time (time more steps at once if the clock reads 0)")
    }
    guard samples >= 1 else {
      throw .invalidArgument("samples is \(samples) for rank \(rank); it must be at least 1")
    }
    let latest = computeSeconds / Double(samples)
    // A normal (not subnormal) time keeps the smoothed times and their mean positive.
    guard latest.isNormal else {
      throw .invalidArgument(
        "rank \(rank): \(computeSeconds) s for \(samples) samples is too short to plan from")
    }
    // A weighted sum of two positive terms stays positive; `s + a * (latest - s)` can cancel
    // to 0 (a = 1, s much larger than latest).
    secondsPerSample[rank] =
      secondsPerSample[rank].map { (1 - smoothing) * $0 + smoothing * latest } ?? latest
  }

  /// The plan to use from now on, and whether it differs from the previous proposal. The first
  /// proposal always counts as changed, since the caller has not received a plan before.
  /// Fails, changing nothing, only when the smoothed times are too far apart to plan with.
  public mutating func propose() throws(KaitianError) -> (batches: [Int], changed: Bool) {
    let candidate = try plan()
    guard let current else {
      self.current = candidate
      return (candidate, true)
    }
    let moved = zip(candidate, current).contains { new, old in
      let change = Double(abs(new - old))
      return change >= 1 && change > hysteresis * Double(old)
    }
    guard moved else { return (current, false) }
    self.current = candidate
    return (candidate, true)
  }

  /// The plan from the smoothed times. A rank not yet observed is taken to run at the mean
  /// speed of the observed ones, and all at the same speed (an even split) when none is.
  private func plan() throws(KaitianError) -> [Int] {
    let observed = secondsPerSample.compactMap { $0 }
    // Summing the parts rather than dividing the sum cannot overflow.
    let assumed = observed.isEmpty ? 1 : observed.reduce(0) { $0 + $1 / Double(observed.count) }
    return try planner.plan(secondsPerSample: secondsPerSample.map { $0 ?? assumed })
  }
}
