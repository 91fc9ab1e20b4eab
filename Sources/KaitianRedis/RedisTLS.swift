import Glibc
import KaitianPOSIX
import KaitianStore
import NIOCore
import NIOSSL

/// The TLS settings of a `rediss://` store: whom to trust and, for a server that asks for
/// client certificates (Redis's default `tls-auth-clients yes`), who we are.
///
/// Read from the environment, as the password is, so that `kaitian run` hands them to every
/// worker and nothing lands on a command line:
/// - `REDIS_TLS_CA_FILE`: PEM file of the CAs that sign the server's certificate; without it,
///   the system's trust store (a hosted Redis signed by a public CA needs nothing).
/// - `REDIS_TLS_CERT_FILE` and `REDIS_TLS_KEY_FILE`: PEM client certificate and its key.
///
/// The server's certificate is always verified, including its name: the URL's host name, or
/// its IP address against the certificate's IP entries. Why no switch to turn that off: a
/// store that is not verified could be anyone's, and every rank trusts what the store says.
/// Files another user could write are refused (they would choose whom we trust or who we are).
public struct RedisTLS: Sendable {
  public static let caFileVariable = "REDIS_TLS_CA_FILE"
  public static let certificateFileVariable = "REDIS_TLS_CERT_FILE"
  public static let keyFileVariable = "REDIS_TLS_KEY_FILE"

  let context: NIOSSLContext

  /// The settings in the environment; throws `.invalidArgument` naming the variable and file.
  public static func fromEnvironment() throws(StoreError) -> RedisTLS {
    try RedisTLS(
      caFile: EnvironmentVariable.value(caFileVariable),
      certificateFile: EnvironmentVariable.value(certificateFileVariable),
      keyFile: EnvironmentVariable.value(keyFileVariable))
  }

  public init(caFile: String?, certificateFile: String?, keyFile: String?) throws(StoreError) {
    var configuration = TLSConfiguration.makeClientConfiguration()
    configuration.certificateVerification = .fullVerification
    if let caFile {
      try Self.checkNotWritableByOthers(caFile, variable: Self.caFileVariable)
      configuration.trustRoots = .certificates(
        try Self.load(caFile, variable: Self.caFileVariable) {
          try NIOSSLCertificate.fromPEMFile(caFile)
        })
    }
    switch (certificateFile, keyFile) {
    case (nil, nil): break
    case (let certificateFile?, let keyFile?):
      try Self.checkNotWritableByOthers(certificateFile, variable: Self.certificateFileVariable)
      try Self.checkNotWritableByOthers(keyFile, variable: Self.keyFileVariable)
      let chain = try Self.load(certificateFile, variable: Self.certificateFileVariable) {
        try NIOSSLCertificate.fromPEMFile(certificateFile)
      }
      configuration.certificateChain = chain.map { .certificate($0) }
      configuration.privateKey = .privateKey(
        try Self.load(keyFile, variable: Self.keyFileVariable) {
          try NIOSSLPrivateKey(file: keyFile, format: .pem)
        })
    default:
      throw .foreign(
        .invalidArgument,
        "a Redis client certificate needs both \(Self.certificateFileVariable) and "
          + "\(Self.keyFileVariable); only one is set")
    }
    do {
      context = try NIOSSLContext(configuration: configuration)
    } catch {
      throw .foreign(.invalidArgument, "cannot set up TLS for Redis: \(error)")
    }
  }

  /// The handler that runs TLS on a new connection to `host`.
  func handler(host: String) throws -> NIOSSLClientHandler {
    // A name goes in SNI and is checked against the certificate; for an IP address (which SNI
    // cannot carry) NIOSSL checks the connected address against the certificate's IP entries.
    try NIOSSLClientHandler(context: context, serverHostname: Self.isIPAddress(host) ? nil : host)
  }

  static func isIPAddress(_ host: String) -> Bool {
    var v4 = in_addr()
    var v6 = in6_addr()
    return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
  }

  private static func load<Loaded>(
    _ path: String, variable: String, _ body: () throws -> Loaded
  ) throws(StoreError) -> Loaded {
    do {
      return try body()
    } catch {
      throw .foreign(
        .invalidArgument, "cannot load \(variable)=\(path) (a PEM file is expected): \(error)")
    }
  }

  /// Refuses a file that a user other than its owner (or root) may write, or that belongs to
  /// another user who is not root: whoever can write it decides whom this process trusts.
  static func checkNotWritableByOthers(_ path: String, variable: String) throws(StoreError) {
    var status = stat()
    guard stat(path, &status) == 0 else {
      throw .foreign(
        .invalidArgument,
        "cannot read \(variable)=\(path): \(errnoText(errno))")
    }
    if status.st_uid != geteuid() && status.st_uid != 0 {
      throw .foreign(
        .invalidArgument,
        "\(variable)=\(path) belongs to user \(status.st_uid), not to you or root; copy it to "
          + "a file of your own")
    }
    if status.st_mode & (S_IWGRP | S_IWOTH) != 0 {
      throw .foreign(
        .invalidArgument,
        "\(variable)=\(path) can be written by other users (mode "
          + "\(String(status.st_mode & 0o777, radix: 8))); chmod go-w it")
    }
  }
}
