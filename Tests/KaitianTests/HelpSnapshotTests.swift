import Glibc
import Testing

/// `--help` of every command against a committed snapshot, so a change to the CLI's text is a
/// deliberate one. KAITIAN_UPDATE_SNAPSHOTS=1 rewrites the snapshots instead of comparing.
@Suite struct HelpSnapshotTests {
  static let commands: [[String]] = [
    [], ["bench"], ["run"], ["devices"], ["monitor"], ["store"], ["store", "serve"],
  ]

  @Test(arguments: commands)
  func helpMatchesSnapshot(command: [String]) throws {
    let child = try ChildProcess("kaitian", command + ["--help"], environment: ["COLUMNS": "100"])
    #expect(child.wait(seconds: 30) == 0, "\(child.errors)")
    let name = (["kaitian"] + command).joined(separator: "-")
    let path = Self.snapshotDirectory + "/\(name).txt"
    if getenv("KAITIAN_UPDATE_SNAPSHOTS") != nil {
      let file = try #require(fopen(path, "w"))
      fputs(child.output, file)
      fclose(file)
      return
    }
    let expected = ChildProcess.read(path)
    #expect(!expected.isEmpty, "no snapshot at \(path); run with KAITIAN_UPDATE_SNAPSHOTS=1")
    #expect(child.output == expected, "kaitian \(command.joined(separator: " ")) --help changed")
  }

  static var snapshotDirectory: String {
    let file = #filePath
    return String(file[..<file.lastIndex(of: "/")!]) + "/Snapshots"
  }
}
