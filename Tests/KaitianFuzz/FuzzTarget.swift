import KaitianStore

/// The fuzz target: every decoder that reads bytes from the network, fed arbitrary input.
/// It must never crash, hang or allocate without bound; errors are the expected outcome.
///
/// Built by scripts/fuzz.sh with libFuzzer (`-sanitize=fuzzer,address`, which supplies main).
/// A normal build makes a replayer instead: `KaitianFuzz FILE...` runs the target on each file,
/// so the committed corpus is exercised by the tests without the fuzzer.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
  let bytes = Array(UnsafeBufferPointer(start: data, count: size))
  let limits = StoreWireLimits(maxFrameSize: 1 << 16, maxKeySize: 256, maxKeysPerWait: 64)
  if bytes.count >= 4 {
    _ = try? StoreWire.payloadLength(header: Array(bytes[0..<4]), maxFrameSize: limits.maxFrameSize)
  }
  _ = try? StoreWire.decodeRequest(bytes, limits: limits)
  _ = try? StoreWire.decodeResponse(bytes, limits: limits)
  if let request = try? StoreWire.decodeRequest(bytes, limits: limits) {
    // A decoded request must survive a round trip unchanged.
    let again = try? StoreWire.decodeRequest(StoreWire.encode(request), limits: limits)
    precondition(again == request, "request round trip changed \(request)")
  }
  return 0
}

#if KAITIAN_FUZZING
  /// libFuzzer's entry point. SwiftPM links an executable's entry as `<Product>_main`, so the
  /// fuzzing build defines that symbol and hands control to libFuzzer's driver.
  @_silgen_name("LLVMFuzzerRunDriver")
  func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ target: @convention(c) (UnsafePointer<UInt8>, Int) -> Int32
  ) -> Int32

  @_cdecl("KaitianFuzz_main")
  func fuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?)
    -> Int32
  {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments, fuzzOneInput)
  }
#else
  import Glibc

  /// Without libFuzzer: replays the files named on the command line through the target.
  @main
  enum CorpusReplayer {
    static func main() {
      for path in CommandLine.arguments.dropFirst() {
        guard let file = fopen(path, "rb") else {
          print("cannot open \(path)")
          exit(2)
        }
        var input: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
          let n = fread(&buffer, 1, buffer.count, file)
          if n <= 0 { break }
          input += buffer[0..<n]
        }
        fclose(file)
        var padded = input + [0]  // a valid pointer even for an empty input
        _ = padded.withUnsafeMutableBufferPointer { fuzzOneInput($0.baseAddress!, input.count) }
      }
      print("replayed \(CommandLine.arguments.count - 1) inputs")
    }
  }
#endif
