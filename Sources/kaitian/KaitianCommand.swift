import ArgumentParser
import Kaitian

/// The `kaitian` command: discovers devices, launches jobs, benchmarks the engine, and serves
/// the rendezvous store.
@main
struct KaitianCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "kaitian",
    abstract: "Collective communication across heterogeneous accelerators.",
    discussion: """
      Kaitian joins ranks of different device kinds into one training job. This command lists \
      the accelerators of this host, launches a job's workers, benchmarks the host-memory \
      engine, and runs the rendezvous store.
      """,
    version: KaitianVersion.string,
    subcommands: [
      BenchCommand.self, DevicesCommand.self, MonitorCommand.self, RunCommand.self,
      StoreCommand.self, GuardCommand.self,
    ])
}
