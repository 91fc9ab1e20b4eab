import Glibc
import Kaitian
import KaitianAuth
import KaitianHeader
import KaitianRedis
import KaitianStore

// The rendezvous store functions of include/kaitian.h.

/// host NULL listens on every address ("::"), like StoreServer's default.
@_cdecl("ktStoreServerStart")
public func ktStoreServerStart(
  _ server: UnsafeMutablePointer<ktStoreServer_t?>?, _ host: UnsafePointer<CChar>?,
  _ port: Int32, _ token: UnsafePointer<CChar>?, _ boundPort: UnsafeMutablePointer<Int32>?
) -> ktResult_t {
  entryPoint("ktStoreServerStart") { arguments throws(KaitianError) in
    let server = try arguments.required(server, "server")
    server.pointee = nil
    let boundPort = try arguments.required(boundPort, "boundPort")
    guard let port = UInt16(exactly: port) else {
      throw arguments.invalid("port \(port) is not between 0 and 65535")
    }
    let store = StoreServer(
      host: host.map { String(cString: $0) } ?? "::", port: port,
      token: try arguments.token(token, "token"))
    do throws(StoreError) {
      boundPort.pointee = Int32(try store.start())
    } catch {
      throw arguments.storeFailure(error)
    }
    server.pointee = StoreServerHandle(store).retainedPointer()
  }
}

@_cdecl("ktStoreServerStop")
public func ktStoreServerStop(_ server: ktStoreServer_t?) -> ktResult_t {
  entryPoint("ktStoreServerStop") { arguments throws(KaitianError) in
    let handle = try arguments.required(server, "server")
    StoreServerHandle.from(handle).server.stop()
    StoreServerHandle.release(handle)
  }
}

/// address is "host:port" (Kaitian's store) or "redis://..." (keys under kaitian/$KAITIAN_JOB_ID/).
/// timeoutSeconds bounds connecting (the server may start later); <= 0 means 30 seconds.
@_cdecl("ktStoreConnect")
public func ktStoreConnect(
  _ store: UnsafeMutablePointer<ktStore_t?>?, _ address: UnsafePointer<CChar>?,
  _ token: UnsafePointer<CChar>?, _ timeoutSeconds: Double
) -> ktResult_t {
  entryPoint("ktStoreConnect") { arguments throws(KaitianError) in
    let store = try arguments.required(store, "store")
    store.pointee = nil
    let address = try arguments.string(address, "address")
    let connectTimeout =
      timeoutSeconds > 0 ? try arguments.storeTimeout(timeoutSeconds) : .seconds(30)
    let located: StoreLocator.Address
    do throws(StoreError) {
      located = try StoreLocator.parse(address)
    } catch {
      throw arguments.storeFailure(error)
    }
    // Only Kaitian's own store checks the job token; Redis has its password in the URL.
    let token: JobToken? =
      if case .embedded = located { try arguments.token(token, "token") } else { nil }
    do throws(StoreError) {
      let client = try StoreLocator.connect(
        located, token: token, jobID: getenv("KAITIAN_JOB_ID").map { String(cString: $0) },
        connectTimeout: connectTimeout, clientName: "C ABI, pid \(getpid())")
      store.pointee = StoreHandle(client).retainedPointer()
    } catch {
      throw arguments.storeFailure(error)
    }
  }
}

@_cdecl("ktStoreFromCallbacks")
public func ktStoreFromCallbacks(
  _ store: UnsafeMutablePointer<ktStore_t?>?, _ callbacks: UnsafePointer<ktStoreCallbacks_t>?
) -> ktResult_t {
  entryPoint("ktStoreFromCallbacks") { arguments throws(KaitianError) in
    let store = try arguments.required(store, "store")
    store.pointee = nil
    let callbacks = try arguments.required(callbacks, "callbacks")
    // Read `size` alone first: a smaller struct from another header version ends before the
    // fields this one has.
    let size = UnsafeRawPointer(callbacks).load(as: Int.self)
    guard size >= MemoryLayout<ktStoreCallbacks_t>.size else {
      throw arguments.invalid(
        "callbacks->size is \(size), less than sizeof(ktStoreCallbacks_t) = "
          + "\(MemoryLayout<ktStoreCallbacks_t>.size); set it to sizeof(ktStoreCallbacks_t)")
    }
    guard let callbackStore = CallbackStore(callbacks.pointee) else {
      throw arguments.invalid("callbacks needs all four functions: set, get, add and wait")
    }
    store.pointee = StoreHandle(callbackStore).retainedPointer()
  }
}

@_cdecl("ktStoreSet")
public func ktStoreSet(
  _ store: ktStore_t?, _ key: UnsafePointer<CChar>?, _ value: UnsafeRawPointer?, _ length: Int
) -> ktResult_t {
  entryPoint("ktStoreSet") { arguments throws(KaitianError) in
    let store = StoreHandle.from(try arguments.required(store, "store")).store
    let key = try arguments.string(key, "key")
    let length = try arguments.count(length, "length")
    let bytes = UnsafeRawBufferPointer(
      start: try arguments.input(value, count: length, "value"), count: length)
    do throws(StoreError) {
      try store.set(key: key, value: Array(bytes))
    } catch {
      throw arguments.storeFailure(error)
    }
  }
}

@_cdecl("ktStoreGet")
public func ktStoreGet(
  _ store: ktStore_t?, _ key: UnsafePointer<CChar>?, _ value: UnsafeMutableRawPointer?,
  _ capacity: Int, _ length: UnsafeMutablePointer<Int>?, _ timeoutSeconds: Double
) -> ktResult_t {
  entryPoint("ktStoreGet") { arguments throws(KaitianError) in
    let store = StoreHandle.from(try arguments.required(store, "store")).store
    let key = try arguments.string(key, "key")
    let length = try arguments.required(length, "length")
    let capacity = try arguments.count(capacity, "capacity")
    let buffer = try arguments.output(value, count: capacity, "value")
    let timeout = try arguments.storeTimeout(timeoutSeconds)
    let bytes: [UInt8]
    do throws(StoreError) {
      bytes = try store.get(key: key, timeout: timeout)
    } catch {
      throw arguments.storeFailure(error)
    }
    length.pointee = bytes.count
    guard bytes.count <= capacity else {
      throw arguments.invalid(
        "the value of '\(key)' has \(bytes.count) bytes, more than capacity \(capacity); "
          + "*length holds the size needed")
    }
    buffer.copyMemory(from: bytes, byteCount: bytes.count)
  }
}

@_cdecl("ktStoreAdd")
public func ktStoreAdd(
  _ store: ktStore_t?, _ key: UnsafePointer<CChar>?, _ delta: Int64,
  _ result: UnsafeMutablePointer<Int64>?
) -> ktResult_t {
  entryPoint("ktStoreAdd") { arguments throws(KaitianError) in
    let store = StoreHandle.from(try arguments.required(store, "store")).store
    let key = try arguments.string(key, "key")
    let result = try arguments.required(result, "result")
    do throws(StoreError) {
      result.pointee = try store.add(key: key, delta: delta)
    } catch {
      throw arguments.storeFailure(error)
    }
  }
}

@_cdecl("ktStoreDeletePrefix")
public func ktStoreDeletePrefix(
  _ store: ktStore_t?, _ prefix: UnsafePointer<CChar>?, _ removed: UnsafeMutablePointer<Int>?
) -> ktResult_t {
  entryPoint("ktStoreDeletePrefix") { arguments throws(KaitianError) in
    let handle = StoreHandle.from(try arguments.required(store, "store"))
    let prefix = try arguments.string(prefix, "prefix")
    guard !prefix.isEmpty else {
      throw arguments.invalid("the prefix is empty, which would remove every key of the store")
    }
    guard let store = handle.store as? any KeyValueStore else {
      throw KaitianError(
        .invalidUsage, call: "ktStoreDeletePrefix",
        "a store made of callbacks (ktStoreFromCallbacks) cannot list or remove keys")
    }
    do throws(StoreError) {
      var count = 0
      for key in try store.keys(prefix: prefix) where try store.delete(key: key) { count += 1 }
      removed?.pointee = count
    } catch {
      throw arguments.storeFailure(error)
    }
  }
}

@_cdecl("ktStoreFree")
public func ktStoreFree(_ store: ktStore_t?) -> ktResult_t {
  entryPoint("ktStoreFree") { arguments throws(KaitianError) in
    StoreHandle.release(try arguments.required(store, "store"))
  }
}
