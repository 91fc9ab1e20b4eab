import Glibc
import KaitianPOSIX
import KaitianRedis
import Synchronization
import Testing

@testable import KaitianLaunch

/// A real `redis-server` for one test: started on a free port of 127.0.0.1 without persistence,
/// in a temporary directory, and killed (with the directory removed) when the test drops it.
final class RedisServer: Sendable {
  /// Where redis-server is; nil when it is not installed.
  static let executable: String? = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
    .first { access($0, X_OK) == 0 }

  /// Tests that need a server are enabled by this; without one they are skipped here and the
  /// `installedInCI` test fails in CI (env CI set), so CI cannot pass without exercising Redis.
  static let isInstalled = executable != nil
  static let notInstalledReason: Comment =
    "redis-server is not installed (scripts/setup.sh installs it: apt-get install redis-server)"

  let port: UInt16
  let directory: String
  private let extraArguments: [String]
  /// The running server, 0 when there is none.
  private let pid = Mutex<pid_t>(0)

  var url: RedisURL { RedisURL(host: "127.0.0.1", port: port) }
  var address: String { "redis://127.0.0.1:\(port)" }

  /// A server on plain TCP, with `arguments` added to its command line.
  init(arguments: [String] = []) throws {
    var template = Array("/tmp/kaitian-redis-XXXXXX".utf8CString)
    directory = String(cString: mkdtemp(&template))
    port = try freePort()
    extraArguments = ["--port", "\(port)"] + arguments
    try start()
  }

  /// A server that speaks only TLS on its port, with `certificates`' server certificate;
  /// `clientCertificates` makes it require a client certificate signed by their CA.
  init(tls certificates: TestCertificates, clientCertificates: Bool) throws {
    var template = Array("/tmp/kaitian-redis-XXXXXX".utf8CString)
    directory = String(cString: mkdtemp(&template))
    port = try freePort()
    extraArguments = [
      "--port", "0", "--tls-port", "\(port)", "--tls-cert-file", certificates.serverCertificate,
      "--tls-key-file", certificates.serverKey, "--tls-ca-cert-file", certificates.caCertificate,
      "--tls-auth-clients", clientCertificates ? "yes" : "no",
    ]
    try start()
  }

  deinit {
    kill()
    _ = try? run("/bin/rm", ["-rf", directory])
  }

  /// Starts the server (again, after `kill`, on the same port and empty).
  func start() throws {
    let arguments =
      [
        "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", directory, "--logfile", "\(directory)/redis.log",
      ] + extraArguments
    let started = try spawn(try #require(Self.executable), arguments)
    pid.withLock { $0 = started }
    // Ready once it accepts connections; a server that dies at start is reported with its log.
    for _ in 0..<500 {
      if canConnect(port: port) { return }
      var status: Int32 = 0
      if waitpid(started, &status, WNOHANG) == started {
        pid.withLock { $0 = 0 }
        throw FixtureError("redis-server exited at start: \(log)")
      }
      usleep(10_000)
    }
    throw FixtureError("redis-server did not accept connections within 5 s: \(log)")
  }

  /// SIGKILL, as a crash or an OOM kill would end it.
  func kill() {
    let running = pid.withLock { pid in
      defer { pid = 0 }
      return pid
    }
    guard running > 0 else { return }
    Glibc.kill(running, SIGKILL)
    var status: Int32 = 0
    waitpid(running, &status, 0)
  }

  var log: String { readFile("\(directory)/redis.log") }
}

struct FixtureError: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

/// Starts `program` with stdin and stdout on /dev/null, stderr there too or in `stderrPath`.
func spawn(
  _ program: String, _ arguments: [String],
  stderrPath: String? = nil
) throws -> pid_t {
  let spawn = ProcessSpawn(descriptors: [
    (0, .file("/dev/null", flags: O_RDWR)), (1, .file("/dev/null", flags: O_RDWR)),
    (2, .file(stderrPath ?? "/dev/null", flags: O_WRONLY | O_CREAT | O_TRUNC)),
  ])
  switch spawn.start(program, arguments: arguments) {
  case .success(let pid): return pid
  case .failure(let error): throw FixtureError("\(error)")
  }
}

/// Runs `program` to the end and returns its exit status (128 + signal if killed).
func run(_ program: String, _ arguments: [String]) throws -> Int32 {
  let pid = try spawn(program, arguments)
  var status: Int32 = 0
  _ = retryingInterrupts { waitpid(pid, &status, 0) }
  return status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
}

/// A port nobody listens on now (the kernel's choice for port 0).
func freePort() throws -> UInt16 {
  try TCPSocket.listen(host: "127.0.0.1", port: 0).localPort
}

func canConnect(port: UInt16) -> Bool {
  (try? TCPSocket.connect(host: "127.0.0.1", port: port, deadline: .after(.milliseconds(50))))
    != nil
}

/// A CA, a server certificate it signed for localhost and 127.0.0.1, and a client certificate
/// it signed, made with the openssl command in a temporary directory removed on drop.
final class TestCertificates: Sendable {
  let directory: String
  var caCertificate: String { "\(directory)/ca.crt" }
  var serverCertificate: String { "\(directory)/server.crt" }
  var serverKey: String { "\(directory)/server.key" }
  var clientCertificate: String { "\(directory)/client.crt" }
  var clientKey: String { "\(directory)/client.key" }

  static let openssl: String? = ["/usr/bin/openssl", "/usr/local/bin/openssl"]
    .first { access($0, X_OK) == 0 }

  /// `serverNames` go in the server certificate's subjectAltName ("DNS:localhost,IP:127.0.0.1").
  init(serverNames: String = "DNS:localhost,IP:127.0.0.1") throws {
    var template = Array("/tmp/kaitian-tls-XXXXXX".utf8CString)
    directory = String(cString: mkdtemp(&template))
    let openssl = try #require(Self.openssl, "the openssl command (scripts/setup.sh installs it)")
    func make(_ arguments: [String]) throws {
      let status = try run(openssl, arguments)
      guard status == 0 else { throw FixtureError("openssl \(arguments[0]) exited \(status)") }
    }
    try make([
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(directory)/ca.key",
      "-out", caCertificate, "-days", "1", "-subj", "/CN=kaitian-test-ca",
    ])
    for (name, subject, names) in [
      ("server", "/CN=localhost", serverNames), ("client", "/CN=kaitian-client", nil),
    ] {
      try make([
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "\(directory)/\(name).key",
        "-out", "\(directory)/\(name).csr", "-subj", subject,
      ])
      var sign = [
        "x509", "-req", "-in", "\(directory)/\(name).csr", "-CA", caCertificate, "-CAkey",
        "\(directory)/ca.key", "-CAcreateserial", "-out", "\(directory)/\(name).crt", "-days", "1",
      ]
      if let names {
        let extensions = "\(directory)/\(name).ext"
        let file = fopen(extensions, "w")
        fputs("subjectAltName=\(names)\n", file)
        fclose(file)
        sign += ["-extfile", extensions]
      }
      try make(sign)
    }
    // Redis reads the server key as the user running it; the files are this user's own.
    for file in [caCertificate, serverCertificate, serverKey, clientCertificate, clientKey] {
      chmod(file, 0o600)
    }
  }

  deinit {
    _ = try? run("/bin/rm", ["-rf", directory])
  }
}
