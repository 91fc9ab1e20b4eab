import Glibc
import Testing

/// Ranks as separate processes: the same check matrix as the thread tests, and faults that
/// only processes have (a rank killed or frozen mid-collective).
@Suite(.serialized) struct ProcessTests {
  enum Layout: String, CaseIterable {
    case sharedMemory
    case tcp
    case mixed
  }

  @Test(arguments: [
    (1, Layout.sharedMemory), (2, .sharedMemory), (3, .sharedMemory), (5, .sharedMemory), (2, .tcp),
    (3, .mixed),
  ])
  func collectiveMatrix(size: Int, layout: Layout) throws {
    let job = try ProcessJob(size: size, arguments: ["matrix"]) { rank in
      switch layout {
      case .sharedMemory: ["KAITIAN_HOST_ID": "host-a"]
      case .tcp: ["KAITIAN_HOST_ID": "host-a", "KAITIAN_TRANSPORT": "tcp"]
      case .mixed: ["KAITIAN_HOST_ID": rank < 2 ? "host-a" : "host-b"]
      }
    }
    let exits = job.wait(for: Array(0..<size), seconds: 240)
    for rank in 0..<size {
      #expect(
        exits[rank] == 0,
        "rank \(rank) exit \(String(describing: exits[rank])): \(job.errors(rank))")
    }
  }

  /// SIGKILL one rank while all loop on allreduce: every other rank must fail, naming it,
  /// long before the (deliberately long) timeout.
  @Test(arguments: [Layout.sharedMemory, .tcp])
  func killedRankIsNamedByTheOthers(layout: Layout) throws {
    let timeout = 60.0
    let job = try ProcessJob(size: 3, arguments: ["loop", "120"], timeoutSeconds: timeout) { _ in
      layout == .tcp ? ["KAITIAN_TRANSPORT": "tcp"] : ["KAITIAN_HOST_ID": "host-a"]
    }
    #expect(job.waitForOutput("ready", ranks: [0, 1, 2], seconds: 60))
    usleep(300_000)
    let killedAt = ProcessJob.now()
    job.signal(1, SIGKILL)
    let exits = job.wait(for: [0, 2], seconds: timeout)
    let detection = ProcessJob.now() - killedAt
    for rank in [0, 2] {
      #expect(
        exits[rank == 0 ? 0 : 1] == 3,
        "rank \(rank) exit \(String(describing: exits)): \(job.errors(rank))")
      let message = job.errors(rank)
      #expect(message.contains("rank 1"), "rank \(rank) said: \(message)")
      #expect(message.contains("allreduce"), "rank \(rank) said: \(message)")
    }
    #expect(detection < timeout, "detected after \(detection) s")
  }

  /// SIGSTOP one rank with heartbeats off: the others cannot tell it from a slow one, so they
  /// must time out.
  @Test func frozenRankTimesOutWithoutHeartbeats() throws {
    let job = try ProcessJob(size: 2, arguments: ["loop", "120"], timeoutSeconds: 2) { _ in
      ["KAITIAN_HOST_ID": "host-a", "KAITIAN_HEARTBEAT_TIMEOUT": "0"]
    }
    #expect(job.waitForOutput("ready", ranks: [0, 1], seconds: 60))
    job.signal(1, SIGSTOP)
    let exits = job.wait(for: [0], seconds: 20)
    job.signal(1, SIGKILL)
    #expect(exits[0] == 3, "rank 0: \(job.errors(0))")
    #expect(job.errors(0).contains("timed out after 2 s"), "rank 0 said: \(job.errors(0))")
    #expect(job.errors(0).contains("rank 1"), "rank 0 said: \(job.errors(0))")
  }

  /// SIGSTOP one rank with a long call timeout: its heartbeats stop, so the others report it
  /// as silent at about the heartbeat timeout (2 s), long before the call timeout (120 s).
  @Test(arguments: [Layout.sharedMemory, .tcp])
  func frozenRankIsFoundByHeartbeat(layout: Layout) throws {
    let callTimeout = 120.0
    let job = try ProcessJob(size: 3, arguments: ["loop", "240"], timeoutSeconds: callTimeout) {
      _ in
      var environment = ["KAITIAN_HOST_ID": "host-a", "KAITIAN_HEARTBEAT_TIMEOUT": "2"]
      if layout == .tcp { environment["KAITIAN_TRANSPORT"] = "tcp" }
      return environment
    }
    #expect(job.waitForOutput("ready", ranks: [0, 1, 2], seconds: 60))
    usleep(300_000)
    let stoppedAt = ProcessJob.now()
    job.signal(1, SIGSTOP)
    let exits = job.wait(for: [0, 2], seconds: callTimeout / 2)
    let detection = ProcessJob.now() - stoppedAt
    job.signal(1, SIGKILL)
    for (index, rank) in [0, 2].enumerated() {
      let message = job.errors(rank)
      #expect(exits[index] == 3, "rank \(rank) exit \(String(describing: exits)): \(message)")
      #expect(message.contains("rank 1"), "rank \(rank) said: \(message)")
      #expect(message.contains("no heartbeat for"), "rank \(rank) said: \(message)")
      #expect(message.contains("allreduce"), "rank \(rank) said: \(message)")
    }
    #expect(detection < callTimeout / 2, "detected after \(detection) s")
  }
}
