import Glibc

/// One `posix_spawn`, the one place the launcher, its tool probes and the tests start a program:
/// the child's standard descriptors, a new process group, signals back to their defaults.
///
/// Why posix_spawn and not fork: the launcher has threads (the store server, the supervisor's
/// readers), and after fork only async-signal-safe calls are allowed until exec; posix_spawn
/// does the descriptor set-up in the child for us (`LaunchGuard` forks only where it must).
package struct ProcessSpawn {
  /// What one of the child's descriptors becomes.
  package enum Source {
    /// A file opened in the child (`O_*` flags; `mode` when created).
    case file(String, flags: Int32, mode: mode_t = 0o644)
    /// A copy of one of this process's descriptors (dup2).
    case descriptor(Int32)
  }

  /// The child's descriptors, set in order; others it inherits unless close-on-exec.
  package var descriptors: [(Int32, Source)] = []
  /// This process's descriptors the child must not keep (a pipe's other end).
  package var closing: [Int32] = []
  /// The child leads a process group of its own, so that a signal to the group reaches
  /// everything it starts, and no blocked signals; SIGINT, SIGTERM and SIGPIPE are back to their
  /// defaults (an ignored signal would otherwise stay ignored across exec).
  package var ownProcessGroup = false

  package init(
    descriptors: [(Int32, Source)] = [], closing: [Int32] = [], ownProcessGroup: Bool = false
  ) {
    self.descriptors = descriptors
    self.closing = closing
    self.ownProcessGroup = ownProcessGroup
  }

  /// Starts `program` (a path, or a name looked up on PATH) with `arguments`; `environment`
  /// nil inherits this process's. Returns the child's pid, or the errno posix_spawn gave.
  package func start(
    _ program: String, arguments: [String], environment: [String: String]? = nil
  ) -> Result<pid_t, SpawnError> {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    for (target, source) in descriptors {
      switch source {
      case .file(let path, let flags, let mode):
        posix_spawn_file_actions_addopen(&actions, target, path, flags, mode)
      case .descriptor(let descriptor):
        posix_spawn_file_actions_adddup2(&actions, descriptor, target)
      }
    }
    for descriptor in closing { posix_spawn_file_actions_addclose(&actions, descriptor) }

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    if ownProcessGroup {
      posix_spawnattr_setpgroup(&attributes, 0)
      var noSignals = sigset_t()
      sigemptyset(&noSignals)
      posix_spawnattr_setsigmask(&attributes, &noSignals)
      var defaults = sigset_t()
      sigemptyset(&defaults)
      for signal in [SIGINT, SIGTERM, SIGPIPE] { sigaddset(&defaults, signal) }
      posix_spawnattr_setsigdefault(&attributes, &defaults)
      posix_spawnattr_setflags(
        &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    }

    let argv = ([program] + arguments).map { strdup($0) } + [nil]
    let envp = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
    defer {
      argv.forEach { free($0) }
      envp?.forEach { free($0) }
    }
    var pid: pid_t = 0
    let result =
      envp.map { posix_spawnp(&pid, program, &actions, &attributes, argv, $0) }
      ?? posix_spawnp(&pid, program, &actions, &attributes, argv, environ)
    guard result == 0 else { return .failure(SpawnError(program: program, code: result)) }
    return .success(pid)
  }
}

/// Why a program could not be started.
package struct SpawnError: Error, CustomStringConvertible {
  package let program: String
  package let code: Int32
  package var description: String {
    "cannot start \(program): \(errnoText(code))"
  }
}
