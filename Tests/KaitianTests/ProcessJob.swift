import Glibc
import KaitianAuth
import KaitianStore

/// Ranks started as separate processes of KaitianTestWorker, with an embedded store.
final class ProcessJob {
  let size: Int
  private let ranks: [ChildProcess]
  private let server: StoreServer

  /// `environment(rank)` adds variables per rank (KAITIAN_HOST_ID, KAITIAN_TRANSPORT, ...).
  init(
    size: Int, arguments: [String], timeoutSeconds: Double = 20,
    environment: (Int) -> [String: String] = { _ in [:] }
  ) throws {
    self.size = size
    let token = JobToken.generate()
    server = StoreServer(host: "127.0.0.1", port: 0, token: token)
    let port = try server.start()
    ranks = try (0..<size).map { rank in
      var variables = [
        "RANK": "\(rank)", "WORLD_SIZE": "\(size)", "KAITIAN_TEST_STORE": "127.0.0.1:\(port)",
        "KAITIAN_TOKEN": token.stringValue, "KAITIAN_TIMEOUT": "\(timeoutSeconds)",
        "PATH": "/usr/bin:/bin",
      ]
      variables.merge(environment(rank)) { $1 }
      return try ChildProcess("KaitianTestWorker", arguments, environment: variables)
    }
  }

  deinit { server.stop() }

  func output(_ rank: Int) -> String { ranks[rank].output }
  func errors(_ rank: Int) -> String { ranks[rank].errors }
  func signal(_ rank: Int, _ number: Int32) { ranks[rank].signal(number) }

  /// Waits until every rank in `ranks` printed a line containing `text`, or `seconds` pass.
  func waitForOutput(_ text: String, ranks selected: [Int], seconds: Double) -> Bool {
    let end = ChildProcess.now() + seconds
    return selected.allSatisfy { rank in
      ranks[rank].waitForOutput(text, seconds: max(0, end - ChildProcess.now()))
    }
  }

  /// Waits for the selected ranks to exit, at most `seconds` in all; returns each one's exit
  /// status (128 + signal when killed), or nil for a rank still running.
  func wait(for selected: [Int], seconds: Double) -> [Int32?] {
    let end = ChildProcess.now() + seconds
    while ChildProcess.now() < end && !selected.allSatisfy({ ranks[$0].poll() }) {
      usleep(10_000)
    }
    return selected.map { ranks[$0].wait(seconds: 0) }
  }

  static func now() -> Double { ChildProcess.now() }
}
