import Glibc

/// A plain POSIX thread running a closure.
///
/// The store server blocks threads in `poll` and in condition waits for long periods, which
/// must not happen on Swift's cooperative concurrency pool (it has one thread per core), so it
/// uses dedicated threads instead.
public final class OSThread: Sendable {
  private let handle: pthread_t

  private init(handle: pthread_t) {
    self.handle = handle
  }

  /// Starts a joinable thread; call `join()` on it exactly once. `name` is for error messages
  /// and, cut to 15 bytes, the name `top -H`, `ps -L` and /proc/PID/task/TID/comm show.
  public static func spawn(
    name: String, _ body: @escaping @Sendable () -> Void
  ) throws(SocketError) -> OSThread {
    OSThread(handle: try start(name: name, body))
  }

  /// Starts a thread that cleans up after itself; nobody can join it, so `body` must signal
  /// its own completion if anyone needs to know.
  public static func detach(name: String, _ body: @escaping @Sendable () -> Void)
    throws(SocketError)
  {
    pthread_detach(try start(name: name, body))
  }

  /// Waits for the thread to finish.
  public func join() {
    pthread_join(handle, nil)
  }

  private final class Box {
    let name: String
    let body: @Sendable () -> Void
    init(_ name: String, _ body: @escaping @Sendable () -> Void) {
      self.name = name
      self.body = body
    }
  }

  /// Names the calling thread through /proc/thread-self/comm, so per-thread CPU time
  /// (/proc/PID/task/*/stat) says which of Kaitian's threads used it. Glibc's Swift overlay
  /// does not expose `pthread_setname_np`; best effort, a failure leaves the inherited name.
  private static func nameCurrentThread(_ name: String) {
    let fd = open("/proc/thread-self/comm", O_WRONLY)
    guard fd >= 0 else { return }
    defer { close(fd) }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
  }

  private static func start(
    name: String, _ body: @escaping @Sendable () -> Void
  ) throws(SocketError) -> pthread_t {
    let context = Unmanaged.passRetained(Box(name, body)).toOpaque()
    var handle = pthread_t()
    let status = pthread_create(
      &handle, nil,
      { context in
        let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
        OSThread.nameCurrentThread(box.name)
        box.body()
        return nil
      }, context)
    guard status == 0 else {
      Unmanaged<Box>.fromOpaque(context).release()
      throw SocketError.systemCall("pthread_create for thread '\(name)'", errno: status)
    }
    return handle
  }
}
