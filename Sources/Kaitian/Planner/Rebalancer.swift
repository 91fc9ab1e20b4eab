/// Online re-balancing: per-rank compute times in, a new plan out when the speeds have moved.
///
/// Each rank's seconds per sample are smoothed by an exponential moving average, so one slow
/// step (a page fault, a neighbour's burst) does not move the plan; a new plan is proposed only
/// when it would shorten the predicted step (the slowest rank's fixed part plus its batch times
/// its smoothed seconds per sample) by more than `hysteresis` (a fraction). Why the step time and not the
/// batches: a rank with a small batch moves by a large fraction of it for a gain of a few
/// percent, and re-planning on that makes the plan wander with the noise; what a plan is for
/// is the step time, so that is what a change must improve.
///
/// A step also costs what does not grow with the batch (see `BatchPlanner.plan(secondsPerSample:
/// fixedSeconds:)`). Given each rank's measured step cost (`setStepCosts`), an observation of
/// whole steps scales that rank's measured cost, fixed part and per-sample part alike, to what
/// the job really shows, and the plan equalises the scaled step times. Why: a rank's time per
/// sample depends on its batch (its fixed part is spread over the samples), so a plan from
/// times per sample is right only for the batches they were observed at. From an even split
/// it approaches the balanced plan over several re-plans, `interval` steps apart and each
/// needing a predicted gain above the hysteresis; with the costs' shape, the first re-plan
/// lands on it. Measured MobileNetV2 ranks at a quarter of a core took 400 ms for a step of 4
/// samples and 560 ms for one of 7: about 200 ms of each step did not grow with the batch.
///
/// The rebalancer is a pure function of the calls made on it: ranks that feed it the same
/// observations (for example after an allgather of every rank's times) and propose at the same
/// steps agree on every plan without further communication. Observations of different ranks
/// are independent, so their order between ranks does not matter.
public struct Rebalancer: Sendable {
  public let planner: BatchPlanner
  /// The weight of a new observation in the moving average, in (0, 1]; 1 keeps only the last.
  public let smoothing: Double
  /// The fraction by which a new plan must shorten the predicted step time, in [0, 1).
  public let hysteresis: Double
  /// Each rank's smoothed compute seconds per sample; nil until the rank is observed.
  public private(set) var secondsPerSample: [Double?]
  /// Each rank's fixed part of a step, in samples of its own work (fixed seconds over seconds
  /// per sample, as measured); all 0 until `setStepCosts`, which plans per sample only.
  public private(set) var overheadSamples: [Double]
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
    guard hysteresis >= 0, hysteresis < 1 else {
      throw .invalidArgument(
        "hysteresis is \(hysteresis); it must be a fraction in [0, 1) of the predicted step "
          + "time (e.g. 0.05; 0 re-plans on any predicted gain)")
    }
    self.planner = planner
    self.smoothing = smoothing
    self.hysteresis = hysteresis
    secondsPerSample = Array(repeating: nil, count: planner.ranks)
    overheadSamples = Array(repeating: 0, count: planner.ranks)
  }

  /// Each rank's measured step cost: `fixedSeconds[i] + b * secondsPerSample[i]` for a step of
  /// b samples. Only its shape is kept (the fixed part in samples' worth); observations of
  /// whole steps then scale it (`observe(rank:computeSeconds:samples:steps:)`).
  public mutating func setStepCosts(
    fixedSeconds: [Double], secondsPerSample measured: [Double]
  ) throws(KaitianError) {
    guard fixedSeconds.count == planner.ranks, measured.count == planner.ranks else {
      throw .invalidArgument(
        "step costs for \(fixedSeconds.count) and \(measured.count) ranks; the rebalancer has "
          + "\(planner.ranks)")
    }
    overheadSamples = try (0..<planner.ranks).map { (rank: Int) throws(KaitianError) -> Double in
      let fixed = fixedSeconds[rank]
      let perSample = measured[rank]
      guard fixed.isFinite, fixed >= 0, perSample.isNormal, perSample > 0 else {
        throw .invalidArgument(
          "rank \(rank)'s step cost is \(fixed) s + \(perSample) s per sample; it needs a finite "
            + "fixed part of at least 0 and a positive time per sample")
      }
      return fixed / perSample
    }
  }

  /// Rank `rank` spent `computeSeconds` of compute (not collective waits) on `samples` samples
  /// in `steps` steps. With the steps known (more than 0), the rank's fixed part is taken out
  /// (see `setStepCosts`); with 0 (unknown), every second counts as per-sample work.
  public mutating func observe(
    rank: Int, computeSeconds: Double, samples: Int, steps: Int = 0
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
    guard steps >= 0 else {
      throw .invalidArgument(
        "steps is \(steps) for rank \(rank); it must be at least 0 (0: unknown)")
    }
    let latest = computeSeconds / (Double(samples) + Double(steps) * overheadSamples[rank])
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
  /// proposal always counts as changed, since the caller has not received a plan before; later
  /// ones change the plan only once every rank has been observed.
  /// Fails, changing nothing, only when the smoothed times are too far apart to plan with.
  public mutating func propose() throws(KaitianError) -> (batches: [Int], changed: Bool) {
    let speeds = estimatedSecondsPerSample()
    let fixed = zip(overheadSamples, speeds).map { $0 * $1 }
    let candidate = try planner.plan(secondsPerSample: speeds, fixedSeconds: fixed)
    guard let current else {
      self.current = candidate
      return (candidate, true)
    }
    // Without a figure for every rank the gain would be a guess: keep the plan.
    guard !secondsPerSample.contains(nil) else { return (current, false) }
    let gain =
      1 - Self.stepSeconds(candidate, speeds, fixed) / Self.stepSeconds(current, speeds, fixed)
    guard candidate != current, gain > hysteresis else { return (current, false) }
    self.current = candidate
    return (candidate, true)
  }

  /// Makes `plan` the current one, as if proposed: the plan a job starts with (measured
  /// before training, or restored from a checkpoint), so that later proposals are weighed
  /// against what the ranks really run. It must be a plan the planner could make: one batch
  /// per rank, each at least 1 and within the rank's limit, summing to the global batch in
  /// fixed-global mode.
  public mutating func adopt(_ plan: [Int]) throws(KaitianError) {
    guard plan.count == planner.ranks else {
      throw .invalidArgument("a plan of \(plan.count) batches for \(planner.ranks) ranks")
    }
    for (rank, size) in plan.enumerated() {
      guard size >= 1, size <= (planner.maxBatch[rank] ?? Int.max) else {
        throw .invalidArgument(
          "rank \(rank)'s batch \(size) is outside [1, \(planner.maxBatch[rank].map(String.init) ?? "no limit")]"
        )
      }
    }
    if planner.mode == .fixedGlobal {
      guard plan.reduce(0, +) == planner.batch else {
        throw .invalidArgument(
          "the plan \(plan) sums to \(plan.reduce(0, +)), not to the global batch \(planner.batch)")
      }
    }
    current = plan
  }

  /// The predicted step time of `plan`: its slowest rank's compute.
  private static func stepSeconds(
    _ plan: [Int], _ secondsPerSample: [Double], _ fixedSeconds: [Double]
  ) -> Double {
    (0..<plan.count).map { fixedSeconds[$0] + Double(plan[$0]) * secondsPerSample[$0] }.max() ?? 0
  }

  /// The smoothed times. A rank not yet observed is taken to run at the mean speed of the
  /// observed ones, and all at the same speed (an even split) when none is.
  private func estimatedSecondsPerSample() -> [Double] {
    let observed = secondsPerSample.compactMap { $0 }
    // Summing the parts rather than dividing the sum cannot overflow.
    let assumed = observed.isEmpty ? 1 : observed.reduce(0) { $0 + $1 / Double(observed.count) }
    return secondsPerSample.map { $0 ?? assumed }
  }
}
