import ArgumentParser
import Glibc
import KaitianAuth
import KaitianLaunch
import KaitianPOSIX
import KaitianStore

/// `kaitian store serve`: the rendezvous store as a standalone server.
struct StoreCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "store", abstract: "Run Kaitian's rendezvous store.",
    subcommands: [Serve.self])

  struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Serve the store until interrupted (Ctrl-C or SIGTERM).",
      discussion: """
        Clients must prove the job token (KAITIAN_TOKEN or KAITIAN_TOKEN_FILE, or --token-file). \
        With --generate-token a fresh token is written to the --token-file path first.
        """)

    @Option(help: "Address to listen on; :: means every IPv4 and IPv6 address.")
    var host = "::"

    @Option(help: "Port to listen on; 0 picks a free port.")
    var port: UInt16 = 29_400

    @OptionGroup var auth: TokenOptions

    @Flag(help: "Create a fresh token and write it to --token-file (mode 0600).")
    var generateToken = false

    func validate() throws {
      if generateToken && auth.tokenFile == nil {
        throw ValidationError("--generate-token needs --token-file to write the token to")
      }
    }

    func run() throws {
      let token = try loadToken()
      // Before any thread starts, so every thread inherits the mask and sigwait gets them.
      ShutdownSignal.block()
      let server = StoreServer(host: host, port: port, token: token)
      let bound = try server.start()
      print("kaitian store listening on \(Endpoint(host: host, port: bound))")
      fflush(nil)
      ShutdownSignal.waitForInterrupt()
      server.stop()
      print("kaitian store stopped")
    }

    private func loadToken() throws -> JobToken {
      if generateToken, let tokenFile = auth.tokenFile {
        let token = JobToken.generate()
        try TokenFile.write(token, to: tokenFile)
        return token
      }
      return try auth.requiredToken()
    }
  }
}

/// Turns SIGINT and SIGTERM into something a thread waits for, instead of process death.
enum ShutdownSignal {
  private static var signals: sigset_t {
    var signals = sigset_t()
    sigemptyset(&signals)
    sigaddset(&signals, SIGINT)
    sigaddset(&signals, SIGTERM)
    return signals
  }

  /// Blocks the two signals in this thread and every thread it starts afterwards.
  static func block() {
    var set = signals
    pthread_sigmask(SIG_BLOCK, &set, nil)
  }

  /// Waits until one of them arrives; returns its number. Call `block()` first.
  @discardableResult
  static func waitForInterrupt() -> Int32 {
    var set = signals
    var received: Int32 = 0
    sigwait(&set, &received)
    return received
  }
}
