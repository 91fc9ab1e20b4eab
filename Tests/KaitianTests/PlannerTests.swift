import KaitianTestSupport
import Testing

@testable import Kaitian

/// One random planning problem: times spanning two orders of magnitude, like a fast GPU
/// beside a CPU, and a global batch from a few samples per rank to thousands.
private struct Problem: CustomStringConvertible {
  var times: [Double]
  var batch: Int
  var limits: [Int?]

  init(_ random: inout SeededRandom, limited: Bool) {
    let ranks = Int.random(in: 1...9, using: &random)
    times = (0..<ranks).map { _ in Double.random(in: 0.001...0.1, using: &random) }
    batch = Int.random(in: ranks...4096, using: &random)
    limits = Array(repeating: nil, count: ranks)
    guard limited else { return }
    for rank in 0..<ranks where Bool.random(using: &random) {
      limits[rank] = Int.random(in: 1...max(1, 2 * batch / ranks), using: &random)
    }
    // Keep the problem feasible: an all-limited job must hold the batch.
    if limits.allSatisfy({ $0 != nil }) {
      limits[ranks - 1] = nil
    }
  }

  var description: String { "times \(times), batch \(batch), limits \(limits)" }

  func plan(_ mode: PlanMode = .fixedGlobal) throws -> [Int] {
    try BatchPlanner(ranks: times.count, batch: batch, mode: mode, maxBatch: limits)
      .plan(secondsPerSample: times)
  }
}

@Suite struct BatchPlannerTests {
  static let cases = 2000

  @Test func fixedGlobalSumsExactlyWithinBounds() throws {
    var random = SeededRandom(seed: 1)
    for _ in 0..<Self.cases {
      let problem = Problem(&random, limited: true)
      let batches = try problem.plan()
      #expect(batches.reduce(0, +) == problem.batch, "\(problem): \(batches)")
      #expect(batches.allSatisfy { $0 >= 1 }, "\(problem): \(batches)")
      for (size, limit) in zip(batches, problem.limits) {
        #expect(size <= limit ?? size, "\(problem): \(batches)")
      }
    }
  }

  /// The real-valued shares without limits, computed independently of the planner: in
  /// proportion to throughput, a share below 1 raised to 1 and the rest of the batch split
  /// among the others in proportion, until no share is below 1.
  static func exactShares(times: [Double], batch: Int) -> [Double] {
    var pinned = Set<Int>()
    while true {
      let free = times.indices.filter { !pinned.contains($0) }
      let total = free.map { 1 / times[$0] }.reduce(0, +)
      let rest = Double(batch - pinned.count)
      let shares = times.indices.map { pinned.contains($0) ? 1 : rest / times[$0] / total }
      let below = free.filter { shares[$0] < 1 }
      if below.isEmpty { return shares }
      pinned.formUnion(below)
    }
  }

  /// Without limits, each batch is within one sample of the exact proportional share, and a faster rank never gets fewer samples than a slower one.
  @Test func fixedGlobalIsProportionalAndMonotonic() throws {
    var random = SeededRandom(seed: 2)
    for _ in 0..<Self.cases {
      let problem = Problem(&random, limited: false)
      let batches = try problem.plan()
      let exact = Self.exactShares(times: problem.times, batch: problem.batch)
      for (size, share) in zip(batches, exact) {
        #expect(abs(Double(size) - share) < 1 + 1e-9, "\(problem): \(batches)")
      }
      for a in batches.indices {
        for b in batches.indices where problem.times[a] < problem.times[b] {
          #expect(batches[a] >= batches[b], "\(problem): \(batches)")
        }
      }
    }
  }

  /// A limit's excess goes to the unlimited ranks in proportion to their speed.
  @Test func limitsRedistributeInProportion() throws {
    let planner = try BatchPlanner(ranks: 3, batch: 100, maxBatch: [10, nil, nil])
    // Unlimited shares would be 50/25/25; rank 0 holds 10, the other 90 split 45/45.
    #expect(try planner.plan(secondsPerSample: [1, 2, 2]) == [10, 45, 45])
    let skewed = try BatchPlanner(ranks: 3, batch: 100, maxBatch: [10, nil, nil])
    // The 90 left split 2:1 between ranks 1 and 2.
    #expect(try skewed.plan(secondsPerSample: [1, 1, 2]) == [10, 60, 30])
  }

  @Test func everyRankGetsAtLeastOne() throws {
    let planner = try BatchPlanner(ranks: 3, batch: 10)
    // The slow rank's share is 0.05; it gets 1 and the other 9 split evenly, ties going to
    // the lower rank.
    #expect(try planner.plan(secondsPerSample: [1, 1, 100]) == [5, 4, 1])
    let tight = try BatchPlanner(ranks: 4, batch: 4)
    #expect(try tight.plan(secondsPerSample: [1, 1000, 1000, 1000]) == [1, 1, 1, 1])
  }

  /// Deterministic: equal speeds split evenly with the extra samples on the lowest ranks, the
  /// same on every call.
  @Test func tiesGoToLowerRanks() throws {
    let planner = try BatchPlanner(ranks: 3, batch: 11)
    #expect(try planner.plan(secondsPerSample: [0.5, 0.5, 0.5]) == [4, 4, 3])
    #expect(try planner.plan(secondsPerSample: [0.5, 0.5, 0.5]) == [4, 4, 3])
  }

  /// Measurement noise of +-2% moves each rank's exact share by at most about 4% of it, so
  /// its batch by at most 4% of the share plus the one sample rounding may add.
  @Test func stableUnderNoise() throws {
    var random = SeededRandom(seed: 3)
    for _ in 0..<Self.cases {
      let problem = Problem(&random, limited: false)
      let batches = try problem.plan()
      var noisy = problem
      noisy.times = problem.times.map { $0 * Double.random(in: 0.98...1.02, using: &random) }
      let moved = try noisy.plan()
      for (before, after) in zip(batches, moved) {
        let bound = 0.041 * Double(max(before, after)) + 2
        #expect(Double(abs(before - after)) <= bound, "\(problem): \(batches) vs \(moved)")
      }
    }
  }

  @Test func paperModeMatchesTheFormula() throws {
    // The prototype's example: a rank twice as slow gets half the batch.
    let planner = try BatchPlanner(ranks: 2, batch: 64, mode: .paper)
    #expect(try planner.plan(secondsPerSample: [1, 2]) == [64, 32])
    #expect(try BatchPlanner.scores(secondsPerSample: [1, 2]) == [1, 0.5])
    var random = SeededRandom(seed: 4)
    for _ in 0..<Self.cases {
      let problem = Problem(&random, limited: true)
      let batches = try problem.plan(.paper)
      let fastest = problem.times.min()!
      for rank in batches.indices {
        let formula = max(1, Int((Double(problem.batch) * fastest / problem.times[rank]).rounded()))
        #expect(
          batches[rank] == min(formula, problem.limits[rank] ?? formula), "\(problem): \(batches)")
      }
    }
  }

  /// Where the prototype planned a batch of 0, the paper mode keeps at least 1.
  @Test func paperModeNeverPlansZero() throws {
    let planner = try BatchPlanner(ranks: 2, batch: 4, mode: .paper)
    #expect(try planner.plan(secondsPerSample: [1, 100]) == [4, 1])
  }

  @Test func impossibleInputsAreInvalidArguments() {
    func rejects(_ expected: String, _ body: () throws -> Void) {
      do {
        try body()
        Issue.record("accepted, expected an error mentioning \(expected)")
      } catch let error as KaitianError {
        #expect(error.code == .invalidArgument)
        #expect(error.cause.contains(expected), "\(error)")
      } catch {
        Issue.record("\(error) is not a KaitianError")
      }
    }
    rejects("smaller than the 3 ranks") { _ = try BatchPlanner(ranks: 3, batch: 2) }
    rejects("hold 5 samples") { _ = try BatchPlanner(ranks: 2, batch: 6, maxBatch: [2, 3]) }
    rejects("at least one rank") { _ = try BatchPlanner(ranks: 0, batch: 6) }
    rejects("between 1 and 2^53") { _ = try BatchPlanner(ranks: 1, batch: 0, mode: .paper) }
    rejects("maxBatch[1] is 0") { _ = try BatchPlanner(ranks: 2, batch: 4, maxBatch: [nil, 0]) }
    rejects("2 entries for 3 ranks") {
      _ = try BatchPlanner(ranks: 3, batch: 4, maxBatch: [nil, nil])
    }
    let planner = try? BatchPlanner(ranks: 2, batch: 8)
    for bad in [0, -1, .nan, .infinity] {
      rejects("secondsPerSample[1] is") { _ = try planner?.plan(secondsPerSample: [1, bad]) }
    }
    rejects("too far from the fastest") {
      _ = try planner?.plan(secondsPerSample: [1e-300, 1e100])
    }
    rejects("1 entries for 2 ranks") { _ = try planner?.plan(secondsPerSample: [1]) }
    for bad in [-1, .nan, .infinity] {
      rejects("fixedSeconds[0] is") {
        _ = try planner?.plan(secondsPerSample: [1, 1], fixedSeconds: [bad, 0])
      }
    }
    rejects("fixedSeconds has 1 entries") {
      _ = try planner?.plan(secondsPerSample: [1, 1], fixedSeconds: [0])
    }
  }

  @Test func noFixedTimesPlanExactlyAsPerSample() throws {
    var random = SeededRandom(seed: 7)
    for _ in 0..<Self.cases {
      let problem = Problem(&random, limited: true)
      for mode in PlanMode.allCases {
        let planner = try BatchPlanner(
          ranks: problem.times.count, batch: problem.batch, mode: mode, maxBatch: problem.limits)
        let zeros = Array(repeating: 0.0, count: problem.times.count)
        #expect(
          try planner.plan(secondsPerSample: problem.times, fixedSeconds: zeros)
            == planner.plan(secondsPerSample: problem.times), "\(problem), \(mode)")
      }
    }
  }

  /// The case that made fixed times necessary: devices 2x apart per sample, with the same
  /// fixed time per step, measured per sample at 16 samples.
  @Test func fixedTimesAreNotCountedAsPerSampleWork() throws {
    let planner = try BatchPlanner(ranks: 4, batch: 60)
    let perSample = [1.0, 1.0, 2.0, 2.0]
    let fixed = [6.0, 6.0, 6.0, 6.0]
    let measuredAt16 = zip(perSample, fixed).map { $0 + $1 / 16 }
    #expect(try planner.plan(secondsPerSample: measuredAt16) == [19, 19, 11, 11])
    #expect(try planner.plan(secondsPerSample: perSample, fixedSeconds: fixed) == [20, 20, 10, 10])
  }

  /// The samples the floors leave go where they lengthen the slowest step least: shares of
  /// 21.3 on a fast rank and 10.7 on one twice as slow give the fast rank the extra sample
  /// (22 samples take 22 units there, 11 take 22 units on the slow one: a tie, to the lower
  /// rank), and with shares 21.1 / 10.9 the slow rank's 11 samples (22 units) beat the fast
  /// rank's 22 (22.6 units with its fixed part).
  @Test func extraSamplesGoWhereTheyCostLeast() throws {
    let planner = try BatchPlanner(ranks: 2, batch: 32)
    #expect(try planner.plan(secondsPerSample: [1, 2]) == [22, 10])  // largest remainder: 21, 11
    #expect(try planner.plan(secondsPerSample: [1, 2], fixedSeconds: [0.6, 0]) == [21, 11])
  }

  /// Without limits, the plan equalises predicted step times to within one sample of work.
  @Test func fixedTimesEqualisePredictedSteps() throws {
    var random = SeededRandom(seed: 8)
    for _ in 0..<Self.cases {
      let problem = Problem(&random, limited: false)
      let fixed = problem.times.map { _ in Double.random(in: 0...0.5, using: &random) }
      let batches = try BatchPlanner(ranks: problem.times.count, batch: problem.batch)
        .plan(secondsPerSample: problem.times, fixedSeconds: fixed)
      #expect(batches.reduce(0, +) == problem.batch && batches.allSatisfy { $0 >= 1 })
      let steps = batches.indices.map { fixed[$0] + Double(batches[$0]) * problem.times[$0] }
      // A rank held at its 1-sample floor may finish late; the others are within a sample.
      let free = batches.indices.filter { batches[$0] > 1 }
      guard let slowest = free.map({ steps[$0] }).max() else { continue }
      for rank in free {
        #expect(
          slowest - steps[rank] <= 2 * problem.times.max()! + 1e-9,
          "\(problem), fixed \(fixed): \(batches)")
      }
    }
  }

  @Test func paperModeWithFixedTimes() throws {
    let planner = try BatchPlanner(ranks: 2, batch: 10, mode: .paper)
    // Rank 0 takes 10 s for its 10 samples; rank 1 fits 3 samples in that (4 + 3 * 2).
    #expect(try planner.plan(secondsPerSample: [1, 2], fixedSeconds: [0, 4]) == [10, 3])
    // A rank whose fixed time alone exceeds the step still trains 1 sample.
    #expect(try planner.plan(secondsPerSample: [1, 2], fixedSeconds: [0, 40]) == [10, 1])
  }
}

@Suite struct RebalancerTests {
  static func rebalancer(
    ranks: Int = 2, batch: Int = 256, smoothing: Double = 0.3, hysteresis: Double = 0.1
  ) throws -> Rebalancer {
    try Rebalancer(
      planner: BatchPlanner(ranks: ranks, batch: batch), smoothing: smoothing,
      hysteresis: hysteresis)
  }

  @Test func firstProposalIsAnEvenSplitWithoutObservations() throws {
    var rebalancer = try Self.rebalancer(ranks: 3, batch: 10)
    #expect(try rebalancer.propose() == ([4, 3, 3], true))
    #expect(try rebalancer.propose() == ([4, 3, 3], false))
  }

  @Test func firstProposalUsesTheFirstObservations() throws {
    var rebalancer = try Self.rebalancer(batch: 90)
    try rebalancer.observe(rank: 0, computeSeconds: 0.1, samples: 10)
    try rebalancer.observe(rank: 1, computeSeconds: 0.2, samples: 10)
    #expect(try rebalancer.propose() == ([60, 30], true))
  }

  /// Noisy measurements of constant speeds (+-5% per step) trigger no re-plan after the
  /// first plan over many steps, where the same rebalancer without hysteresis re-plans often.
  @Test func hysteresisPreventsOscillation() throws {
    func changes(hysteresis: Double) throws -> Int {
      var random = SeededRandom(seed: 5)
      var rebalancer = try Self.rebalancer(ranks: 3, batch: 300, hysteresis: hysteresis)
      let speeds = [0.01, 0.02, 0.03]
      var changes = 0
      for step in 0..<2000 {
        for (rank, seconds) in speeds.enumerated() {
          let noise = Double.random(in: 0.95...1.05, using: &random)
          try rebalancer.observe(rank: rank, computeSeconds: seconds * noise * 10, samples: 10)
        }
        if step % 10 == 9, try rebalancer.propose().changed { changes += 1 }
      }
      return changes
    }
    #expect(try changes(hysteresis: 0.1) == 1)
    #expect(try changes(hysteresis: 0) > 20)
  }

  /// Rank 1 slows to a third of rank 0's speed mid-run: within 20 observations its batch
  /// falls to about a third of rank 0's (within the hysteresis), and stays there.
  @Test func convergesAfterASpeedChange() throws {
    var rebalancer = try Self.rebalancer(batch: 400)
    for _ in 0..<10 {
      try rebalancer.observe(rank: 0, computeSeconds: 1, samples: 100)
      try rebalancer.observe(rank: 1, computeSeconds: 1, samples: 100)
    }
    #expect(try rebalancer.propose() == ([200, 200], true))
    var plan = [200, 200]
    for _ in 0..<20 {
      try rebalancer.observe(rank: 0, computeSeconds: 0.01 * Double(plan[0]), samples: plan[0])
      try rebalancer.observe(rank: 1, computeSeconds: 0.03 * Double(plan[1]), samples: plan[1])
      plan = try rebalancer.propose().batches
    }
    // The exact split is 300/100; hysteresis may keep rank 1 up to 10% above that.
    #expect(plan.reduce(0, +) == 400)
    #expect(plan[1] >= 100 && plan[1] <= 111, "\(plan)")
  }

  /// Smoothing 1 keeps only the latest observation, however far it is from the previous one.
  @Test func smoothingOfOneKeepsOnlyTheLatest() throws {
    var rebalancer = try Self.rebalancer(batch: 90, smoothing: 1)
    try rebalancer.observe(rank: 0, computeSeconds: 1e-300, samples: 1)
    try rebalancer.observe(rank: 1, computeSeconds: 1e100, samples: 1)
    try rebalancer.observe(rank: 1, computeSeconds: 2e-300, samples: 1)
    #expect(rebalancer.secondsPerSample == [1e-300, 2e-300])
    #expect(try rebalancer.propose() == ([60, 30], true))
  }

  /// Two rebalancers fed the same observations agree on every proposal.
  @Test func deterministic() throws {
    var random = SeededRandom(seed: 6)
    var first = try Self.rebalancer(ranks: 4, batch: 512, hysteresis: 0.05)
    var second = first
    for step in 0..<500 {
      for rank in 0..<4 {
        let seconds = Double.random(in: 0.01...0.2, using: &random)
        try first.observe(rank: rank, computeSeconds: seconds, samples: 16)
        try second.observe(rank: rank, computeSeconds: seconds, samples: 16)
      }
      if step % 7 == 0 { #expect(try first.propose() == second.propose()) }
    }
  }

  /// A small rank's batch may move by a large fraction of itself for a small gain: the plan
  /// stays unless the predicted step (slowest rank's compute) shortens past the hysteresis.
  @Test func hysteresisIsOnThePredictedStepTime() throws {
    var rebalancer = try Self.rebalancer(batch: 128, smoothing: 1, hysteresis: 0.05)
    try rebalancer.adopt([100, 28])
    // Rank 1 measured 10% faster than the plan assumes (3.2 instead of 3.6 ms per sample):
    // the exact plan gives it 2 samples more (+7% of its batch) for a 2% shorter step.
    try rebalancer.observe(rank: 0, computeSeconds: 0.100, samples: 100)
    try rebalancer.observe(rank: 1, computeSeconds: 0.090, samples: 28)
    #expect(try rebalancer.propose() == ([100, 28], false))
    // Rank 1 at half its speed: the step would shorten by far more than 5%.
    try rebalancer.observe(rank: 1, computeSeconds: 0.200, samples: 28)
    let (plan, changed) = try rebalancer.propose()
    #expect(changed && plan[1] < 20 && plan.reduce(0, +) == 128, "\(plan)")
  }

  /// Ranks whose steps cost 0.1 s + 0.01 s per sample and 0.2 s + 0.03 s per sample (64
  /// samples in all), observed at an even split running 1.5x slower than measured (as a job
  /// may): with their measured costs' shape, the first re-plan lands on the balanced plan
  /// [51, 13] (0.61 s); per sample only it goes to [47, 17] (0.71 s) and needs another.
  @Test func stepCostsReachTheBalancedPlanInOneReplan() throws {
    func firstReplan(withCosts: Bool) throws -> [Int] {
      var rebalancer = try Self.rebalancer(batch: 64, smoothing: 1, hysteresis: 0.05)
      try rebalancer.adopt([32, 32])
      if withCosts {
        try rebalancer.setStepCosts(fixedSeconds: [0.1, 0.2], secondsPerSample: [0.01, 0.03])
      }
      for (rank, (fixed, perSample)) in [(0.1, 0.01), (0.2, 0.03)].enumerated() {
        let seconds = 1.5 * 5 * (fixed + 32 * perSample)
        try rebalancer.observe(rank: rank, computeSeconds: seconds, samples: 5 * 32, steps: 5)
      }
      let (plan, changed) = try rebalancer.propose()
      #expect(changed)
      return plan
    }
    #expect(try firstReplan(withCosts: true) == [51, 13])
    #expect(try firstReplan(withCosts: false) == [47, 17])
  }

  @Test func stepCostsAreChecked() throws {
    var rebalancer = try Self.rebalancer()
    for (fixed, perSample) in [
      ([0.1], [0.01, 0.02]), ([-1, 0], [0.01, 0.02]), ([0, 0], [0.01, 0]),
    ] {
      #expect(throws: KaitianError.self, "\(fixed) \(perSample)") {
        try rebalancer.setStepCosts(fixedSeconds: fixed, secondsPerSample: perSample)
      }
    }
    #expect(rebalancer.overheadSamples == [0, 0], "a refused call changes nothing")
    #expect(throws: KaitianError.self) {
      try rebalancer.observe(rank: 0, computeSeconds: 1, samples: 1, steps: -1)
    }
  }

  /// The plan a job starts with becomes the baseline; plans that break the planner's rules
  /// are refused and change nothing.
  @Test func adoptsAStartingPlan() throws {
    var rebalancer = try Rebalancer(
      planner: BatchPlanner(ranks: 2, batch: 100, maxBatch: [nil, 40]), smoothing: 0.5,
      hysteresis: 0.05)
    try rebalancer.adopt([70, 30])
    #expect(rebalancer.current == [70, 30])
    #expect(try rebalancer.propose() == ([70, 30], false), "no observation: nothing to gain")
    for wrong in [[70, 31], [60, 41], [100, 0], [100]] {
      #expect(throws: KaitianError.self, "\(wrong)") { try rebalancer.adopt(wrong) }
    }
    #expect(rebalancer.current == [70, 30])
  }

  @Test func invalidArguments() throws {
    #expect(throws: KaitianError.self) { try Self.rebalancer(smoothing: 0) }
    #expect(throws: KaitianError.self) { try Self.rebalancer(smoothing: 1.5) }
    #expect(throws: KaitianError.self) { try Self.rebalancer(hysteresis: -0.1) }
    #expect(throws: KaitianError.self) { try Self.rebalancer(hysteresis: .nan) }
    #expect(throws: KaitianError.self) { try Self.rebalancer(hysteresis: 1) }
    var rebalancer = try Self.rebalancer()
    #expect(throws: KaitianError.self) {
      try rebalancer.observe(rank: 2, computeSeconds: 1, samples: 1)
    }
    #expect(throws: KaitianError.self) {
      try rebalancer.observe(rank: 0, computeSeconds: 0, samples: 1)
    }
    #expect(throws: KaitianError.self) {
      try rebalancer.observe(rank: 0, computeSeconds: 1, samples: 0)
    }
    // Nothing was recorded by the failed calls: the first plan is still the even split.
    #expect(try rebalancer.propose() == ([128, 128], true))
    // Times too far apart to plan with fail the proposal and keep the previous plan.
    try rebalancer.observe(rank: 0, computeSeconds: 1e-300, samples: 1)
    try rebalancer.observe(rank: 1, computeSeconds: 1e100, samples: 1)
    #expect(throws: KaitianError.self) { try rebalancer.propose() }
    #expect(rebalancer.current == [128, 128])
  }
}
