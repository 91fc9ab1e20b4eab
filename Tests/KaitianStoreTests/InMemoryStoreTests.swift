import Glibc
import Testing

@testable import KaitianPOSIX
@testable import KaitianStore

/// Runs `body` on `count` OS threads at once and waits for all of them, as ranks would run.
func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) throws {
  let threads = try (0..<count).map { index in
    try OSThread.spawn(name: "test \(index)") { body(index) }
  }
  for thread in threads { thread.join() }
}

/// Runs a blocking store semantics check against any `KeyValueStore`, so the in-memory store
/// and the client/server pair are held to the same contract.
func checkSemantics(_ store: some KeyValueStore) throws {
  try store.set(key: "a", value: [1])
  #expect(try store.tryGet(key: "a") == [1])
  #expect(try store.tryGet(key: "missing") == nil)
  #expect(try store.get(key: "a", timeout: .seconds(1)) == [1])
  #expect(try store.add(key: "n", delta: 5) == 5)
  #expect(try store.add(key: "n", delta: -2) == 3)
  #expect(try store.tryGet(key: "n") == Array("3".utf8))
  let notANumber = #expect(throws: StoreError.self) { try store.add(key: "a", delta: 1) }
  #expect(notANumber?.code == .invalidArgument)
  #expect(try store.compareAndSet(key: "c", expected: nil, desired: [7]) == [7])
  #expect(try store.compareAndSet(key: "c", expected: nil, desired: [8]) == [7])
  #expect(try store.compareAndSet(key: "c", expected: [1], desired: [8]) == [7])
  #expect(try store.compareAndSet(key: "c", expected: [7], desired: [8]) == [8])
  #expect(try store.compareAndSet(key: "absent", expected: [1], desired: [2]) == nil)
  try store.wait(keys: ["a", "c"], timeout: .milliseconds(10))
  #expect(try store.keys(prefix: "") == ["a", "c", "n"])
  #expect(try store.keys(prefix: "c") == ["c"])
  #expect(try store.delete(key: "c"))
  #expect(try !store.delete(key: "c"))
  let start = Deadline.now
  let timeout = #expect(throws: StoreError.self) {
    try store.wait(keys: ["a", "late1", "late2"], timeout: .milliseconds(100))
  }
  #expect(timeout?.code == .timeout)
  #expect(timeout?.description.contains("'late1', 'late2'") == true)
  #expect(timeout?.description.contains("'a'") == false)
  #expect(Deadline.now.monotonicNanoseconds - start.monotonicNanoseconds >= 90_000_000)
}

@Suite struct InMemoryStoreTests {
  @Test func semantics() throws {
    try checkSemantics(InMemoryStore())
  }

  @Test func getWaitsForALaterSet() throws {
    let store = InMemoryStore()
    let setter = try OSThread.spawn(name: "setter") {
      sleep(for: .milliseconds(50))
      try? store.set(key: "late", value: [42])
    }
    #expect(try store.get(key: "late", timeout: .seconds(5)) == [42])
    setter.join()
  }

  @Test func concurrentAddsAreAtomic() throws {
    let store = InMemoryStore()
    try runThreads(16) { _ in
      for _ in 0..<500 { _ = try? store.add(key: "count", delta: 1) }
    }
    #expect(try store.add(key: "count", delta: 0) == 8000)
  }

  @Test func onlyOneCompareAndSetWins() throws {
    let store = InMemoryStore()
    try runThreads(8) { rank in
      _ = try? store.compareAndSet(key: "leader", expected: nil, desired: [UInt8(rank)])
    }
    let leader = try #require(try store.tryGet(key: "leader"))
    #expect(leader.count == 1 && leader[0] < 8)
  }

  /// Keys and values count against the quota; writes that would pass it fail and change
  /// nothing, while overwrites that shrink, deletes and counters within it still work.
  @Test func quotaOnStoredBytes() throws {
    let store = InMemoryStore(maxStoredBytes: 100)
    try store.set(key: "a", value: [UInt8](repeating: 1, count: 60))  // 61 bytes
    let error = #expect(throws: StoreError.self) {
      try store.set(key: "b", value: [UInt8](repeating: 2, count: 40))  // 102 in all
    }
    #expect(error?.code == .valueTooLarge)
    #expect(
      error?.description.contains("quota of 100 bytes") == true, "\(String(describing: error))")
    #expect(try store.tryGet(key: "b") == nil)
    #expect(throws: StoreError.self) {
      _ = try store.compareAndSet(
        key: "c", expected: nil, desired: [UInt8](repeating: 0, count: 50))
    }
    try store.set(key: "a", value: [1])  // shrinks to 2 bytes
    _ = try store.add(key: "n", delta: 12)  // 3 bytes
    try store.set(key: "b", value: [UInt8](repeating: 2, count: 90))  // 2 + 3 + 91 = 96
    #expect(throws: StoreError.self) { try store.set(key: "d", value: [1, 2, 3, 4]) }
    #expect(try store.delete(key: "b"))
    try store.set(key: "d", value: [1, 2, 3, 4])
  }

  @Test func shutDownReleasesWaiters() throws {
    let store = InMemoryStore()
    let stopper = try OSThread.spawn(name: "stopper") {
      sleep(for: .milliseconds(50))
      store.shutDown()
    }
    let error = #expect(throws: StoreError.self) {
      try store.get(key: "never", timeout: .seconds(10))
    }
    #expect(error?.code == .stopped)
    stopper.join()
    #expect(throws: StoreError.self) { try store.set(key: "x", value: []) }
  }
}
