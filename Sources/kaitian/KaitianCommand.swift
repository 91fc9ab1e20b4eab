import ArgumentParser
import Kaitian

/// The `kaitian` command: benchmarks the engine and serves the rendezvous store.
@main
struct KaitianCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kaitian",
    abstract: "Collective communication across heterogeneous accelerators.",
    discussion: """
      Kaitian joins ranks of different device kinds into one training job. This command \
      benchmarks its host-memory engine and runs its rendezvous store.
      """,
    version: KaitianVersion.string,
    subcommands: [BenchCommand.self, StoreCommand.self])
}
