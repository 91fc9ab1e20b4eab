import Kaitian
import KaitianHeader
import KaitianPOSIX

// The load-adaptive planning functions of include/kaitian.h.

/// ktRebalancer_t: a Rebalancer behind a lock, since the header lets any thread call any
/// function.
final class RebalancerHandle: OpaqueHandle {
  let rebalancer: ConditionLock<Rebalancer>

  init(_ rebalancer: Rebalancer) { self.rebalancer = ConditionLock(rebalancer) }
}

extension Arguments {
  func planMode(_ raw: ktPlanMode_t) throws(KaitianError) -> PlanMode {
    let value = Int32(bitPattern: raw.rawValue)
    guard let mode = PlanMode(rawValue: value) else {
      throw invalid(
        "mode \(value) is not a ktPlanMode_t (0: ktPlanFixedGlobal, 1: ktPlanPaper)")
    }
    return mode
  }

  /// The rank count of a planning call: it sizes every array the call reads or writes.
  func ranks(_ nranks: Int32) throws(KaitianError) -> Int {
    guard nranks >= 1 else { throw invalid("nranks is \(nranks); it must be at least 1") }
    return Int(nranks)
  }

  /// The planner of one call; entryPoint names the call in its errors.
  func planner(
    ranks: Int, batch: Int64, mode: ktPlanMode_t, maxBatch: UnsafePointer<Int64>?
  ) throws(KaitianError) -> BatchPlanner {
    // The header's "<= 0: no limit" becomes nil; a NULL array means no limits at all.
    let limits = maxBatch.map { pointer in
      UnsafeBufferPointer(start: pointer, count: ranks).map { $0 > 0 ? Int($0) : nil }
    }
    return try BatchPlanner(
      ranks: ranks, batch: Int(batch), mode: try planMode(mode), maxBatch: limits)
  }
}

extension Arguments {
  /// One planning call's plan written to `batches`; `fixedSeconds` NULL means none on any rank.
  func writePlan(
    _ nranks: Int32, fixedSeconds: UnsafePointer<Double>?,
    secondsPerSample: UnsafePointer<Double>?, maxBatch: UnsafePointer<Int64>?, batch: Int64,
    mode: ktPlanMode_t, batches: UnsafeMutablePointer<Int64>?
  ) throws(KaitianError) {
    let ranks = try self.ranks(nranks)
    let times = Array(
      UnsafeBufferPointer(start: try required(secondsPerSample, "secondsPerSample"), count: ranks))
    let fixed =
      fixedSeconds.map { Array(UnsafeBufferPointer(start: $0, count: ranks)) }
      ?? Array(repeating: 0, count: ranks)
    let batches = try required(batches, "batches")
    let planner = try planner(ranks: ranks, batch: batch, mode: mode, maxBatch: maxBatch)
    let plan = try planner.plan(secondsPerSample: times, fixedSeconds: fixed)
    for (rank, size) in plan.enumerated() { batches[rank] = Int64(size) }
  }
}

@_cdecl("ktPlanBatches")
public func ktPlanBatches(
  _ nranks: Int32, _ secondsPerSample: UnsafePointer<Double>?, _ maxBatch: UnsafePointer<Int64>?,
  _ batch: Int64, _ mode: ktPlanMode_t, _ batches: UnsafeMutablePointer<Int64>?
) -> ktResult_t {
  entryPoint("ktPlanBatches") { arguments throws(KaitianError) in
    try arguments.writePlan(
      nranks, fixedSeconds: nil, secondsPerSample: secondsPerSample, maxBatch: maxBatch,
      batch: batch, mode: mode, batches: batches)
  }
}

@_cdecl("ktPlanBatchesWithOverhead")
public func ktPlanBatchesWithOverhead(
  _ nranks: Int32, _ fixedSeconds: UnsafePointer<Double>?,
  _ secondsPerSample: UnsafePointer<Double>?, _ maxBatch: UnsafePointer<Int64>?,
  _ batch: Int64, _ mode: ktPlanMode_t, _ batches: UnsafeMutablePointer<Int64>?
) -> ktResult_t {
  entryPoint("ktPlanBatchesWithOverhead") { arguments throws(KaitianError) in
    try arguments.writePlan(
      nranks, fixedSeconds: fixedSeconds, secondsPerSample: secondsPerSample,
      maxBatch: maxBatch, batch: batch, mode: mode, batches: batches)
  }
}

@_cdecl("ktRebalancerCreate")
public func ktRebalancerCreate(
  _ rebalancer: UnsafeMutablePointer<ktRebalancer_t?>?, _ nranks: Int32, _ batch: Int64,
  _ mode: ktPlanMode_t, _ maxBatch: UnsafePointer<Int64>?, _ smoothing: Double,
  _ hysteresis: Double
) -> ktResult_t {
  entryPoint("ktRebalancerCreate") { arguments throws(KaitianError) in
    let rebalancer = try arguments.required(rebalancer, "rebalancer")
    rebalancer.pointee = nil
    let planner = try arguments.planner(
      ranks: try arguments.ranks(nranks), batch: batch, mode: mode, maxBatch: maxBatch)
    rebalancer.pointee = RebalancerHandle(
      try Rebalancer(planner: planner, smoothing: smoothing, hysteresis: hysteresis)
    ).retainedPointer()
  }
}

@_cdecl("ktRebalancerObserve")
public func ktRebalancerObserve(
  _ rebalancer: ktRebalancer_t?, _ rank: Int32, _ computeSeconds: Double, _ samples: Int64
) -> ktResult_t {
  observe("ktRebalancerObserve", rebalancer, rank, computeSeconds, samples, steps: 0)
}

@_cdecl("ktRebalancerObserveSteps")
public func ktRebalancerObserveSteps(
  _ rebalancer: ktRebalancer_t?, _ rank: Int32, _ computeSeconds: Double, _ samples: Int64,
  _ steps: Int64
) -> ktResult_t {
  observe("ktRebalancerObserveSteps", rebalancer, rank, computeSeconds, samples, steps: steps)
}

/// Both observe entry points, each naming itself in its errors.
private func observe(
  _ call: String, _ rebalancer: ktRebalancer_t?, _ rank: Int32, _ computeSeconds: Double,
  _ samples: Int64, steps: Int64
) -> ktResult_t {
  entryPoint(call) { arguments throws(KaitianError) in
    let handle = RebalancerHandle.from(try arguments.required(rebalancer, "rebalancer"))
    try handle.rebalancer.withLock { rebalancer throws(KaitianError) in
      try rebalancer.observe(
        rank: Int(rank), computeSeconds: computeSeconds, samples: Int(samples), steps: Int(steps))
    }
  }
}

@_cdecl("ktRebalancerSetStepCosts")
public func ktRebalancerSetStepCosts(
  _ rebalancer: ktRebalancer_t?, _ fixedSeconds: UnsafePointer<Double>?,
  _ secondsPerSample: UnsafePointer<Double>?
) -> ktResult_t {
  entryPoint("ktRebalancerSetStepCosts") { arguments throws(KaitianError) in
    let handle = RebalancerHandle.from(try arguments.required(rebalancer, "rebalancer"))
    let fixed = try arguments.required(fixedSeconds, "fixedSeconds")
    let perSample = try arguments.required(secondsPerSample, "secondsPerSample")
    try handle.rebalancer.withLock { rebalancer throws(KaitianError) in
      let ranks = 0..<rebalancer.planner.ranks
      try rebalancer.setStepCosts(
        fixedSeconds: ranks.map { fixed[$0] }, secondsPerSample: ranks.map { perSample[$0] })
    }
  }
}

@_cdecl("ktRebalancerAdopt")
public func ktRebalancerAdopt(
  _ rebalancer: ktRebalancer_t?, _ batches: UnsafePointer<Int64>?
) -> ktResult_t {
  entryPoint("ktRebalancerAdopt") { arguments throws(KaitianError) in
    let handle = RebalancerHandle.from(try arguments.required(rebalancer, "rebalancer"))
    let batches = try arguments.required(batches, "batches")
    try handle.rebalancer.withLock { rebalancer throws(KaitianError) in
      let plan = (0..<rebalancer.planner.ranks).map { Int(batches[$0]) }
      try rebalancer.adopt(plan)
    }
  }
}

@_cdecl("ktRebalancerPropose")
public func ktRebalancerPropose(
  _ rebalancer: ktRebalancer_t?, _ batches: UnsafeMutablePointer<Int64>?,
  _ changed: UnsafeMutablePointer<Int32>?
) -> ktResult_t {
  entryPoint("ktRebalancerPropose") { arguments throws(KaitianError) in
    let handle = RebalancerHandle.from(try arguments.required(rebalancer, "rebalancer"))
    let batches = try arguments.required(batches, "batches")
    let changed = try arguments.required(changed, "changed")
    let proposal = try handle.rebalancer.withLock { rebalancer throws(KaitianError) in
      try rebalancer.propose()
    }
    for (rank, size) in proposal.batches.enumerated() { batches[rank] = Int64(size) }
    changed.pointee = proposal.changed ? 1 : 0
  }
}

@_cdecl("ktRebalancerFree")
public func ktRebalancerFree(_ rebalancer: ktRebalancer_t?) -> ktResult_t {
  entryPoint("ktRebalancerFree") { arguments throws(KaitianError) in
    RebalancerHandle.release(try arguments.required(rebalancer, "rebalancer"))
  }
}
