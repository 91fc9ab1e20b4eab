import ArgumentParser
import KaitianLaunch

/// `kaitian __guard -- COMMAND`: how `kaitian run` and `kaitian bench` start each worker, so
/// the worker ends when the launcher dies (see `LaunchGuard`). Not for people: hidden from help.
struct GuardCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: LaunchGuard.subcommand,
    abstract: "Run a worker that ends when its launcher dies (used by kaitian run and bench).",
    shouldDisplay: false)

  @Option(help: "Seconds between SIGTERM and SIGKILL once the launcher is gone.")
  var graceSeconds = 3.0

  @Argument(parsing: .captureForPassthrough, help: "The worker's command line.")
  var command: [String] = []

  func run() throws {
    LaunchGuard.run(
      command: command.first == "--" ? Array(command.dropFirst()) : command,
      graceSeconds: graceSeconds)
  }
}
