import Glibc
import KaitianPOSIX

/// A C string that lives as long as the process, for the strings the header calls static.
struct StaticCString: @unchecked Sendable {
  let pointer: UnsafePointer<CChar>

  init(_ text: String) {
    // Never freed on purpose: callers may keep these pointers forever.
    pointer = UnsafePointer(strdup(text)!)
  }

  static let empty = StaticCString("")
}

/// A message's C string owned by a handle, so a pointer handed to C stays valid until the
/// handle is freed. The messages it holds never change once they exist (a communicator's first
/// failure, a finished call's error), so the string is made once and then reused.
final class CachedCString: Sendable {
  private let storage = ConditionLock<UnsafeMutablePointer<CChar>?>(nil)

  func pointer(_ message: () -> String) -> UnsafePointer<CChar> {
    storage.withLock { storage in
      let text = storage ?? strdup(message())!
      storage = text
      return UnsafePointer(text)
    }
  }

  deinit { storage.withLock { free($0) } }
}

/// The message of this thread's last failed call, for ktGetLastError.
///
/// A malloc'd C string under a pthread key: each thread's string stays valid until that
/// thread's next failure, and the key's destructor frees it when the thread exits.
enum LastError {
  private static let key: pthread_key_t = {
    var key = pthread_key_t()
    let status = pthread_key_create(&key) { free($0) }
    precondition(status == 0, "pthread_key_create failed with \(status)")
    return key
  }()

  static func record(_ message: String) {
    let previous = pthread_getspecific(key)
    pthread_setspecific(key, strdup(message))
    free(previous)
  }

  static var message: UnsafePointer<CChar> {
    guard let text = pthread_getspecific(key) else { return StaticCString.empty.pointer }
    return UnsafePointer(text.assumingMemoryBound(to: CChar.self))
  }
}
