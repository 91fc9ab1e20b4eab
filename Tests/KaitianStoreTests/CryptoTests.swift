import Glibc
import Testing

@testable import KaitianAuth
@testable import KaitianPOSIX

private func hex(_ bytes: [UInt8]) -> String {
  bytes.map {
    String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16)
  }
  .joined()
}

private func bytes(hex text: String) -> [UInt8] {
  var result: [UInt8] = []
  var index = text.startIndex
  while index < text.endIndex {
    let next = text.index(index, offsetBy: 2)
    result.append(UInt8(text[index..<next], radix: 16)!)
    index = next
  }
  return result
}

@Suite struct SHA256Tests {
  @Test(arguments: [
    ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
      "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    ),
  ])
  func fipsVectors(message: String, digest: String) {
    #expect(hex(SHA256.hash(Array(message.utf8))) == digest)
  }

  @Test func millionAs() {
    var hasher = SHA256()
    let chunk = [UInt8](repeating: UInt8(ascii: "a"), count: 1000)
    for _ in 0..<1000 { hasher.update(chunk) }
    #expect(
      hex(hasher.finalize()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
  }

  @Test func blockBoundaryLengthsMatchIncrementalHashing() {
    for length in [55, 56, 57, 63, 64, 65, 119, 120, 128] {
      let message = (0..<length).map { UInt8(truncatingIfNeeded: $0) }
      var hasher = SHA256()
      hasher.update(message.prefix(length / 2))
      hasher.update(message.dropFirst(length / 2))
      #expect(hasher.finalize() == SHA256.hash(message))
    }
  }

  /// Whole blocks straight from memory, a pending partial block before and after them.
  @Test func piecesFromMemoryMatchOneShotHashing() {
    let message = (0..<5000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
    for cuts in [[1, 63, 64, 65, 1000], [64, 128, 4096], [3], [0, 0, 5000]] {
      var hasher = SHA256()
      var offset = 0
      message.withUnsafeBytes { all in
        for cut in cuts + [message.count] where offset < message.count {
          let end = min(max(offset + cut, offset), message.count)
          hasher.update(UnsafeRawBufferPointer(rebasing: all[offset..<end]))
          offset = end
        }
      }
      #expect(hasher.finalize() == SHA256.hash(message), "cuts \(cuts)")
    }
  }
}

@Suite struct HMACTests {
  // RFC 4231 test cases 1, 2, 3, 4, 6 and 7 (case 5 tests truncation, which is not used).
  @Test(arguments: [
    (
      String(repeating: "0b", count: 20), hex(Array("Hi There".utf8)),
      "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    ),
    (
      hex(Array("Jefe".utf8)), hex(Array("what do ya want for nothing?".utf8)),
      "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    ),
    (
      String(repeating: "aa", count: 20), String(repeating: "dd", count: 50),
      "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"
    ),
    (
      "0102030405060708090a0b0c0d0e0f10111213141516171819",
      String(repeating: "cd", count: 50),
      "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"
    ),
    (
      String(repeating: "aa", count: 131),
      hex(Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8)),
      "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    ),
    (
      String(repeating: "aa", count: 131),
      hex(
        Array(
          ("This is a test using a larger than block-size key and a larger than block-size "
            + "data. The key needs to be hashed before being used by the HMAC algorithm.").utf8)),
      "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"
    ),
  ])
  func rfc4231(key: String, message: String, mac: String) {
    #expect(hex(HMACSHA256.authenticate(bytes(hex: message), key: bytes(hex: key))) == mac)
  }

  @Test func aStreamMACsEachMessageAsOneCallWould() {
    let key = Array("frame key".utf8)
    var stream = HMACSHA256Stream(key: key)
    let first = (0..<300).map { UInt8(truncatingIfNeeded: $0) }
    first.withUnsafeBytes {
      stream.update(UnsafeRawBufferPointer(rebasing: $0[..<100]))
      stream.update(UnsafeRawBufferPointer(rebasing: $0[100...]))
    }
    #expect(stream.finalize() == HMACSHA256.authenticate(first, key: key))
    // finalize starts the next message under the same key.
    stream.update(Array("second".utf8))
    #expect(stream.finalize() == HMACSHA256.authenticate(Array("second".utf8), key: key))
    #expect(stream.finalize() == HMACSHA256.authenticate([], key: key))
  }

  @Test func constantTimeComparison() {
    #expect(constantTimeEqual([1, 2, 3], [1, 2, 3]))
    #expect(!constantTimeEqual([1, 2, 3], [1, 2, 4]))
    #expect(!constantTimeEqual([1, 2, 3], [1, 2]))
    #expect(constantTimeEqual([], []))
  }
}

@Suite struct JobTokenTests {
  @Test func generatedTokensAreDistinctHex() throws {
    let first = JobToken.generate()
    let second = JobToken.generate()
    #expect(first.stringValue.count == 64)
    #expect(first.stringValue.allSatisfy { $0.isHexDigit })
    #expect(first.stringValue != second.stringValue)
    #expect(!first.description.contains(first.stringValue))
  }

  @Test func emptyTokenIsRejected() {
    #expect(throws: JobTokenError.self) { try JobToken("") }
  }

  @Test func shortTokenIsRejectedWithAdvice() throws {
    let error = #expect(throws: JobTokenError.self) {
      try JobToken("secret", origin: "KAITIAN_TOKEN")
    }
    #expect(error?.code == .tooShort)
    #expect(
      error?.description.contains("KAITIAN_TOKEN is 6 bytes long") == true,
      "\(String(describing: error))")
    #expect(error?.description.contains("at least 16") == true)
    _ = try JobToken(String(repeating: "x", count: JobToken.minimumBytes))
  }

  @Test func aTokenFileIsReadTrimmedAndNamedInErrors() throws {
    let path = "/tmp/kaitian-token-file-test-\(getpid())"
    defer { unlink(path) }
    try TextFile.write(path, Array("\n s3cret-0123456789abcdef \n".utf8), mode: 0o600)
    let token = try JobToken.fromFile(path)
    #expect(token.stringValue == "s3cret-0123456789abcdef" && token.origin == path)
    let missing = #expect(throws: JobTokenError.self) { try JobToken.fromFile(path + ".none") }
    #expect(missing?.code == .unreadable && missing?.description.contains(path + ".none") == true)
  }

  @Test func tokenFilesOthersCanReadAreNamed() {
    #expect(SecretFile.exposureWarning(path: "/t", mode: 0o100600, what: "job token") == nil)
    #expect(SecretFile.exposureWarning(path: "/t", mode: 0o100400, what: "job token") == nil)
    let warning = SecretFile.exposureWarning(path: "/t", mode: 0o100644, what: "job token")
    #expect(warning?.contains("has mode 0644") == true && warning?.contains("chmod 600 /t") == true)
    #expect(SecretFile.exposureWarning(path: "/t", mode: 0o100640, what: "job token") != nil)
  }
}

@Suite(.serialized) struct JobTokenEnvironmentTests {
  @Test func tokenFileIsTrimmed() throws {
    let path = "/tmp/kaitian-token-test-\(getpid())"
    let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    #expect(descriptor >= 0)
    let text = Array("  s3cret-0123456789abcdef\n".utf8)
    #expect(write(descriptor, text, text.count) == text.count)
    close(descriptor)
    defer {
      unlink(path)
      unsetenv(JobToken.fileEnvironmentVariable)
    }
    unsetenv(JobToken.environmentVariable)
    setenv(JobToken.fileEnvironmentVariable, path, 1)
    let token = try #require(try JobToken.fromEnvironment())
    #expect(token.stringValue == "s3cret-0123456789abcdef")
    unsetenv(JobToken.fileEnvironmentVariable)
    let error = #expect(throws: JobTokenError.self) { try JobToken.requiredFromEnvironment() }
    #expect(error?.code == .missing)
    #expect(error?.description.contains("KAITIAN_TOKEN") == true)
  }
}
