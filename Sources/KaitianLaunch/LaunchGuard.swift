import Glibc
import KaitianPOSIX

/// Ends a worker when its launcher dies, even by SIGKILL, which the launcher cannot react to.
///
/// Why: the launcher's own cleanup runs only if it gets to run. Linux's parent-death signal
/// (PR_SET_PDEATHSIG) cannot be set through posix_spawn, and it fires when the thread that
/// started the child ends, not the process. So the launcher starts each worker as
/// `kaitian __guard -- COMMAND`, with the read end of a "lifeline" pipe whose only write end is
/// the launcher's: the kernel closes it when the launcher dies, however it dies.
///
/// The guard forks a watcher and then becomes the worker (exec), so the worker keeps the pid,
/// exit status and CPU time the launcher sees, and the watcher is the only extra process. The
/// watcher holds the lifeline: at its end-of-file it stops the worker's process group (the
/// worker and all it started) with SIGTERM, and SIGKILL after the grace period. It leaves
/// quietly once the worker is gone (it is reparented), and the launcher's SIGKILL of the
/// group at the worker's end takes it too.
public enum LaunchGuard {
  /// The hidden subcommand of `kaitian` that runs the guard.
  public static let subcommand = "__guard"
  /// The file descriptor the lifeline's read end is given as in the guard.
  public static let lifelineDescriptor: Int32 = 3

  /// The command line that runs `command` under the guard `executable`.
  public static func commandLine(executable: String, graceSeconds: Double, command: [String])
    -> [String]
  {
    [executable, subcommand, "--grace-seconds", String(graceSeconds), "--"] + command
  }

  /// Forks the watcher, then replaces this process with `command`.
  public static func run(command: [String], graceSeconds: Double) -> Never {
    guard let program = command.first else { fail("no command to run") }
    let lifeline = lifelineDescriptor
    guard fcntl(lifeline, F_SETFD, FD_CLOEXEC) == 0 else {
      fail("file descriptor \(lifeline) (the launcher's lifeline) is not open")
    }
    let worker = getpid()
    let watcher = fork()
    if watcher < 0 { fail("cannot fork the watcher: \(errnoText(errno))") }
    if watcher == 0 { watch(lifeline: lifeline, worker: worker, graceSeconds: graceSeconds) }
    close(lifeline)
    let argv = command.map { strdup($0) } + [nil]
    execvp(program, argv)
    fail("cannot start \(program): \(errnoText(errno))")
  }

  /// The watcher's life: wait for the lifeline to close or the worker to go. Only calls that
  /// are safe after fork (the guard may have had threads) and `_exit`, which runs no handlers.
  private static func watch(lifeline: Int32, worker: pid_t, graceSeconds: Double) -> Never {
    while getppid() == worker {
      var fd = pollfd(fd: lifeline, events: Int16(POLLIN), revents: 0)
      guard retryingInterrupts({ poll(&fd, 1, 250) }).0 > 0, fd.revents != 0 else { continue }
      var byte: UInt8 = 0
      // A read interrupted by a signal must not pass for the launcher's end.
      if retryingInterrupts({ read(lifeline, &byte, 1) }).0 > 0 { continue }
      // The launcher is gone: stop the worker and what it started, then make sure. SIGKILL
      // reaches this watcher too, which is in the same group: nobody is left to report to.
      signal(SIGTERM, SIG_IGN)
      kill(-getpgrp(), SIGTERM)
      let deadline = LocalProcessGroup.now() + graceSeconds
      while LocalProcessGroup.now() < deadline && kill(worker, 0) == 0 { usleep(50_000) }
      kill(-getpgrp(), SIGKILL)
      _exit(0)
    }
    _exit(0)
  }

  private static func fail(_ message: String) -> Never {
    let line = Array("kaitian \(subcommand): \(message)\n".utf8)
    _ = line.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
    exit(127)
  }
}
