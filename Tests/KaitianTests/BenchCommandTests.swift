import CKaitianShim
import Glibc
import KaitianOutput
import KaitianPOSIX
import Testing

/// `kaitian bench` end to end on tiny sizes (what it prints, not how fast), and the CPU binding
/// behind its `--bind core`.
@Suite struct BenchCommandTests {
  @Test(arguments: ["core", "none"])
  func benchChecksEverySizeWithEitherBinding(bind: String) throws {
    let child = try ChildProcess(
      "kaitian",
      [
        "bench", "allreduce", "--ranks", "3", "--min-bytes", "8", "--max-bytes", "1K", "--iters",
        "2", "--warmup", "1", "--check", "--json", "--bind", bind,
      ])
    #expect(child.wait(seconds: 60) == 0, "\(child.errors)")
    let lines = child.output.split(separator: "\n").filter { $0.hasPrefix("{") }
    #expect(lines.count == 8, "8 B to 1 KiB: \(child.output)")
    let records = try lines.map { try JSON.parse(String($0)) }
    #expect(records.allSatisfy { $0["wrong"] == .number(0) && $0["ranks"] == .number(3) })
    #expect(records.allSatisfy { $0["inplace_wrong"] == .number(0) })
  }

  @Test func anUnknownBindingIsRefused() throws {
    let child = try ChildProcess("kaitian", ["bench", "allreduce", "--bind", "socket"])
    #expect(child.wait(seconds: 30) != 0)
    #expect(child.errors.contains("--bind"), "\(child.errors)")
  }

  /// A thread pinned with kt_pin_to_cpu may then run only there, as kt_allowed_cpus reports.
  @Test func pinningAThreadLeavesItOneAllowedCPU() throws {
    var allowed = [Int32](repeating: -1, count: 1024)
    let count = Int(kt_allowed_cpus(&allowed, Int32(allowed.count)))
    #expect(count >= 1 && count <= Int(sysconf(Int32(_SC_NPROCESSORS_CONF))))
    #expect(allowed[0..<count] == allowed[0..<count].sorted()[...])
    let target = allowed[count - 1]
    let seen = ConditionLock<[Int32]?>(nil)
    let thread = try OSThread.spawn(name: "pinned") {
      var mine = [Int32](repeating: -1, count: 1024)
      let status = kt_pin_to_cpu(target)
      let mineCount = Int(kt_allowed_cpus(&mine, Int32(mine.count)))
      seen.withLock { $0 = status == 0 ? Array(mine[0..<max(0, mineCount)]) : [] }
    }
    thread.join()
    #expect(seen.withLock { $0 } == [target])
    // The test's own thread is not affected.
    #expect(Int(kt_allowed_cpus(&allowed, Int32(allowed.count))) == count)
  }
}
