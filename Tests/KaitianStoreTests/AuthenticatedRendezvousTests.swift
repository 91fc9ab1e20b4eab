import Testing

@testable import KaitianAuth
@testable import KaitianStore

/// Values the engine trusts carry a MAC under the job token; the store's other writers cannot
/// make one.
@Suite struct AuthenticatedRendezvousTests {
  let token = try! JobToken("rendezvous-test-token-0123")

  @Test func aSealedValueReadsBackAndCarriesItsMAC() throws {
    let base = InMemoryStore()
    let sealed = AuthenticatedRendezvous(base, token: token)
    try sealed.set(key: "p/endpoint/0", value: Array("127.0.0.1\n4000".utf8))
    #expect(
      try sealed.get(key: "p/endpoint/0", timeout: .seconds(1)) == Array("127.0.0.1\n4000".utf8))
    #expect(try base.get(key: "p/endpoint/0", timeout: .seconds(1)).count == 14 + HMACSHA256.size)
    try sealed.set(key: "p/empty", value: [])
    #expect(try sealed.get(key: "p/empty", timeout: .seconds(1)) == [])
  }

  /// A value written straight into the store (torch's TCPStore, Redis) by someone without the
  /// token: plain, too short for a MAC, or MAC'd under another token.
  @Test(arguments: ["plain", "short", "other token"])
  func aForgedValueIsRefusedNamingTheKey(_ forgery: String) throws {
    let base = InMemoryStore()
    let value: [UInt8]
    switch forgery {
    case "plain":
      value = Array("10.9.9.9\n4000\nevil-host\n1 padding to exceed a MAC's length".utf8)
    case "short": value = [1, 2, 3]
    default:
      let elsewhere = InMemoryStore()
      let other = AuthenticatedRendezvous(
        elsewhere, token: try JobToken("another-job-token-abcdef"))
      try other.set(key: "p/shm/1", value: Array("/kaitian-evil".utf8))
      value = try elsewhere.get(key: "p/shm/1", timeout: .seconds(1))
    }
    try base.set(key: "p/shm/1", value: value)
    let error = #expect(throws: StoreError.self) {
      _ = try AuthenticatedRendezvous(base, token: token).get(key: "p/shm/1", timeout: .seconds(1))
    }
    #expect(error?.code == .authenticationFailed)
    #expect(
      error?.description.contains("'p/shm/1' failed its job-token check") == true,
      "\(String(describing: error))")
  }

  /// The key is inside the MAC: rank 0's genuine endpoint copied to rank 1's key is refused.
  @Test func aGenuineValueMovedToAnotherKeyIsRefused() throws {
    let base = InMemoryStore()
    let sealed = AuthenticatedRendezvous(base, token: token)
    try sealed.set(key: "p/endpoint/0", value: Array("127.0.0.1\n4000".utf8))
    try base.set(
      key: "p/endpoint/1", value: try base.get(key: "p/endpoint/0", timeout: .seconds(1)))
    #expect(throws: StoreError.self) {
      _ = try sealed.get(key: "p/endpoint/1", timeout: .seconds(1))
    }
  }
}
