import Kaitian
import KaitianRedis
import KaitianStore

/// A Swift object handed to C as an opaque pointer that owns one retain, taken when the handle
/// is returned and given back by the matching Free/Destroy/Stop function.
protocol OpaqueHandle: AnyObject {}

extension OpaqueHandle {
  static func from(_ pointer: OpaquePointer) -> Self {
    Unmanaged<Self>.fromOpaque(UnsafeRawPointer(pointer)).takeUnretainedValue()
  }

  static func release(_ pointer: OpaquePointer) {
    Unmanaged<Self>.fromOpaque(UnsafeRawPointer(pointer)).release()
  }

  func retainedPointer() -> OpaquePointer {
    OpaquePointer(Unmanaged.passRetained(self).toOpaque())
  }
}

/// ktStore_t: any rendezvous store, Kaitian's client or the caller's callbacks.
final class StoreHandle: OpaqueHandle {
  let store: any RendezvousStore

  init(_ store: any RendezvousStore) { self.store = store }

  /// The address this process reaches the store server from: the interface peers of a
  /// multi-host job most likely reach this rank on. Unknown for a callback store.
  var advertisedHostHint: String? {
    (store as? StoreClient)?.localAddress.host ?? (store as? RedisStore)?.localHost
  }
}

/// ktStoreServer_t.
final class StoreServerHandle: OpaqueHandle {
  let server: StoreServer

  init(_ server: StoreServer) { self.server = server }
}

/// ktComm_t: the communicator, and the C string of its first failure for ktCommGetLastError.
final class CommHandle: OpaqueHandle {
  let communicator: Communicator
  let failureText = CachedCString()

  init(_ communicator: Communicator) { self.communicator = communicator }
}

/// ktWork_t: one call's Work, and the C string of its error for ktWorkGetError.
final class WorkHandle: OpaqueHandle {
  let work: Work
  let errorText = CachedCString()

  init(_ work: Work) { self.work = work }
}
