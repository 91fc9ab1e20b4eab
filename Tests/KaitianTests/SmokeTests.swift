import Testing

@testable import Kaitian

@Suite struct SmokeTests {
  @Test(arguments: [1, 2, 3, 5], RankHarness.Layout.transports)
  func allReduceFloatSum(size: Int, layout: RankHarness.Layout) throws {
    let errors = RankHarness.run(size: size, layout: layout) { comm in
      for count in [0, 1, 7, 1000, 100_003] {
        let input = (0..<count).map { Float($0 % 13 + comm.rank) }
        var output = [Float](repeating: -1, count: count)
        let work = try input.withUnsafeBytes { inBytes in
          try output.withUnsafeMutableBytes { outBytes in
            try comm.allReduce(
              inBytes.baseAddress ?? UnsafeRawPointer(bitPattern: 8)!,
              into: outBytes.baseAddress ?? UnsafeMutableRawPointer(bitPattern: 8)!, count: count,
              dataType: .float32, op: .sum)
          }
        }
        try work.wait()
        let rankSum = Float(comm.size * (comm.size - 1) / 2)
        for i in 0..<count {
          let expected = Float(i % 13) * Float(comm.size) + rankSum
          if output[i] != expected {
            throw KaitianError(
              .internalError, "count \(count) [\(i)] = \(output[i]) != \(expected)")
          }
        }
      }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors)")
  }

  /// Peers reach each other over IPv6 as well as IPv4.
  @Test(arguments: ["::1", "127.0.0.1"])
  func tcpOverBothAddressFamilies(host: String) {
    let errors = RankHarness.run(size: 3, layout: .tcp, host: host) { comm in
      var values: [Int64] = [Int64(comm.rank + 1), 10]
      try values.withUnsafeMutableBytes { bytes in
        try comm.allReduce(
          bytes.baseAddress!, into: bytes.baseAddress!, count: 2, dataType: .int64, op: .sum
        ).wait()
      }
      if values != [6, 30] { throw KaitianError(.internalError, "got \(values)") }
    }
    #expect(errors.allSatisfy { $0 == nil }, "\(errors)")
  }
}
