import Glibc
import Testing

/// Replays the committed fuzz corpus (Tests/KaitianFuzz/Corpus, grown by scripts/fuzz.sh)
/// through the decoders, so every input the fuzzer found interesting stays harmless.
@Suite struct FuzzCorpusTests {
  @Test func corpusReplaysWithoutFailure() throws {
    let file = #filePath
    let tests = String(file[..<file.lastIndex(of: "/")!])
    let corpus = tests + "/../KaitianFuzz/Corpus"
    guard let directory = opendir(corpus) else {
      Issue.record("no corpus at \(corpus)")
      return
    }
    var inputs: [String] = []
    while let entry = readdir(directory) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) {
        String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self)
      }
      if !name.hasPrefix(".") { inputs.append(corpus + "/" + name) }
    }
    closedir(directory)
    #expect(inputs.count > 10)
    let replay = try ChildProcess("KaitianFuzz", inputs)
    #expect(replay.wait(seconds: 60) == 0, "\(replay.errors)")
    #expect(replay.output.contains("replayed \(inputs.count) inputs"))
  }
}
