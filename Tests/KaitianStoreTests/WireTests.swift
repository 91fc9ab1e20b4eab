import KaitianTestSupport
import Testing

@testable import KaitianPOSIX
@testable import KaitianStore

@Suite struct WireTests {
  static let requests: [StoreRequest] = [
    .set(key: "a", value: [1, 2, 3]),
    .set(key: "", value: []),
    .get(key: "rank/0/addr", timeout: .milliseconds(1500)),
    .tryGet(key: "ключ"),
    .wait(keys: ["x", "y", "z"], timeout: .seconds(3)),
    .wait(keys: [], timeout: .zero),
    .add(key: "counter", delta: -42),
    .add(key: "counter", delta: .min),
    .compareAndSet(key: "k", expected: nil, desired: [9]),
    .compareAndSet(key: "k", expected: [], desired: [9, 8]),
    .delete(key: "gone"),
    .keys(prefix: "rank/"),
  ]

  static let responses: [StoreResponse] = [
    .done, .value([1, 2]), .value([]), .value(nil), .integer(.max), .integer(-7), .flag(true),
    .flag(false), .keys([]), .keys(["a", "b/c"]),
    .failure(StoreError.timeout(missing: ["k"], waited: .seconds(1))),
    .failure(StoreError.stopped),
  ]

  @Test(arguments: requests)
  func requestRoundTrip(_ request: StoreRequest) throws {
    #expect(try StoreWire.decodeRequest(StoreWire.encode(request)) == request)
  }

  @Test(arguments: responses)
  func responseRoundTrip(_ response: StoreResponse) throws {
    #expect(try StoreWire.decodeResponse(StoreWire.encode(response)) == response)
  }

  @Test func truncatedAndExtendedMessagesAreRejected() {
    for request in Self.requests {
      let bytes = StoreWire.encode(request)
      for length in 0..<bytes.count {
        #expect(throws: StoreError.self) {
          try StoreWire.decodeRequest(Array(bytes.prefix(length)))
        }
      }
      #expect(throws: StoreError.self) { try StoreWire.decodeRequest(bytes + [0]) }
    }
  }

  @Test func limitsAreEnforcedByTheDecoder() {
    let limits = StoreWireLimits(maxKeySize: 8, maxKeysPerWait: 2)
    let longKey = StoreWire.encode(.tryGet(key: String(repeating: "k", count: 9)))
    let error = #expect(throws: StoreError.self) {
      try StoreWire.decodeRequest(longKey, limits: limits)
    }
    #expect(error?.code == .protocolViolation)
    let manyKeys = StoreWire.encode(.wait(keys: ["a", "b", "c"], timeout: .zero))
    #expect(throws: StoreError.self) { try StoreWire.decodeRequest(manyKeys, limits: limits) }
  }

  @Test func hugeCountsDoNotAllocate() {
    // A wait that claims four billion keys in a 9-byte message must be refused up front.
    let lie: [UInt8] = [4, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]
    #expect(throws: StoreError.self) {
      try StoreWire.decodeRequest(lie, limits: StoreWireLimits(maxKeysPerWait: .max))
    }
    let listing: [UInt8] = [5, 0xFF, 0xFF, 0xFF, 0xFF]
    #expect(throws: StoreError.self) { try StoreWire.decodeResponse(listing) }
    let value: [UInt8] = [1, 0xFF, 0xFF, 0xFF, 0xFF]
    #expect(throws: StoreError.self) { try StoreWire.decodeResponse(value) }
  }

  @Test func oversizedFrameLengthIsRefusedBeforeAllocation() throws {
    #expect(throws: StoreError.self) {
      try StoreWire.payloadLength(header: [0xFF, 0xFF, 0xFF, 0xFF], maxFrameSize: 64 << 20)
    }
    #expect(try StoreWire.payloadLength(header: [0, 0, 1, 0], maxFrameSize: 256) == 256)
    #expect(StoreWire.frame([7, 8]) == [0, 0, 0, 2, 7, 8])
  }

  @Test func randomBytesNeverCrashTheDecoders() {
    var generator = SeededRandom(seed: 0x5eed)
    for iteration in 0..<10_000 {
      let length = Int(generator.next() % 48)
      var bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
      // Half the inputs start with a valid opcode or status so decoding goes deeper.
      if iteration % 2 == 0, !bytes.isEmpty { bytes[0] = UInt8(1 + iteration / 2 % 8) }
      _ = try? StoreWire.decodeRequest(bytes)
      _ = try? StoreWire.decodeResponse(bytes)
    }
  }
}

@Suite struct AddressTests {
  @Test func parsingAndFormatting() throws {
    #expect(try Endpoint(parsing: "node7:29500") == Endpoint(host: "node7", port: 29500))
    #expect(try Endpoint(parsing: "[::1]:80") == Endpoint(host: "::1", port: 80))
    #expect(Endpoint(host: "fe80::1", port: 5).description == "[fe80::1]:5")
    #expect(Endpoint(host: "10.0.0.1", port: 5).description == "10.0.0.1:5")
    for bad in ["::1:80", "host", "host:", ":80", "host:70000", "[::1]80", "[::1"] {
      let error = #expect(throws: SocketError.self) { try Endpoint(parsing: bad) }
      #expect(error?.code == .invalidAddress)
    }
  }

  @Test func resolution() throws {
    let v4 = try SocketAddress.resolve(host: "127.0.0.1", port: 1234)
    #expect(v4.first?.description == "127.0.0.1:1234")
    #expect(v4.first?.family == .ipv4)
    let v6 = try SocketAddress.resolve(host: "::1", port: 1234)
    #expect(v6.first?.description == "[::1]:1234")
    #expect(try !SocketAddress.resolve(host: "localhost", port: 1).isEmpty)
    let error = #expect(throws: SocketError.self) {
      try SocketAddress.resolve(host: "no-such-host.invalid", port: 1)
    }
    #expect(error?.code == .addressResolution)
  }

  @Test func loopbackInterface() throws {
    #expect(try NetworkInterfaces.address(ofInterface: "lo").host == "127.0.0.1")
    let error = #expect(throws: SocketError.self) {
      try NetworkInterfaces.address(ofInterface: "nosuch0")
    }
    #expect(error?.code == .noSuchInterface)
    #expect(error?.description.contains("lo") == true)
  }
}
