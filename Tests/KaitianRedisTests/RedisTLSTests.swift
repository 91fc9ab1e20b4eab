import Glibc
import KaitianRedis
import KaitianStore
import Testing

@Test func redissURLsAskForTLSAndSayTheirScheme() throws {
  let url = try RedisURL(parsing: "rediss://:pw@cache.example:6380/2")
  #expect(url.usesTLS)
  #expect(url.host == "cache.example" && url.port == 6380 && url.database == 2)
  #expect(url.description == "rediss://:***@cache.example:6380/2")
  #expect(try !RedisURL(parsing: "redis://h").usesTLS)
  #expect(try StoreLocator.parse("rediss://h:1") == .redis(RedisURL(parsing: "rediss://h:1")))
}

/// `rediss://` against a real redis-server that speaks only TLS (Debian's is built with TLS),
/// with certificates made by the openssl command for each test.
@Suite(
  .enabled(if: RedisServer.isInstalled, RedisServer.notInstalledReason),
  .enabled(if: TestCertificates.openssl != nil, "the openssl command is not installed"),
  .serialized)
struct RedisTLSTests {
  private func connect(
    _ host: String, _ server: RedisServer, tls: RedisTLS, job: String = "tls"
  ) throws -> RedisStore {
    try RedisStore(
      url: try RedisURL(parsing: "rediss://\(host):\(server.port)"),
      prefix: RedisStore.prefix(jobID: job), connectTimeout: .seconds(5),
      operationTimeout: .seconds(5), tls: tls)
  }

  @Test func storesOverTLSCheckingTheServerByNameOrAddress() throws {
    let certificates = try TestCertificates()
    let server = try RedisServer(tls: certificates, clientCertificates: false)
    let tls = try RedisTLS(caFile: certificates.caCertificate, certificateFile: nil, keyFile: nil)
    for host in ["localhost", "127.0.0.1"] {
      let store = try connect(host, server, tls: tls)
      try store.set(key: host, value: [1, 2])
      #expect(try store.get(key: host, timeout: .seconds(1)) == [1, 2])
    }
  }

  @Test func aClientCertificateIsSentWhenTheServerAsksForOne() throws {
    let certificates = try TestCertificates()
    let server = try RedisServer(tls: certificates, clientCertificates: true)
    let anonymous = try RedisTLS(
      caFile: certificates.caCertificate, certificateFile: nil, keyFile: nil)
    let refused = #expect(throws: StoreError.self) {
      try connect("127.0.0.1", server, tls: anonymous)
    }
    #expect(refused?.description.contains(RedisTLS.certificateFileVariable) == true)
    let identified = try RedisTLS(
      caFile: certificates.caCertificate, certificateFile: certificates.clientCertificate,
      keyFile: certificates.clientKey)
    try connect("127.0.0.1", server, tls: identified).set(key: "k", value: [3])
  }

  /// A server whose certificate another CA signed, or that names another host, is not talked
  /// to; nor is a plain-TCP server when the URL asks for TLS.
  @Test func aServerThatCannotProveItsIdentityIsRefused() throws {
    let certificates = try TestCertificates(serverNames: "DNS:elsewhere.example")
    let server = try RedisServer(tls: certificates, clientCertificates: false)
    let trusting = try RedisTLS(
      caFile: certificates.caCertificate, certificateFile: nil, keyFile: nil)
    let misnamed = #expect(throws: StoreError.self) {
      try connect("localhost", server, tls: trusting)
    }
    #expect(misnamed?.code == .connectionFailed, "\(String(describing: misnamed))")
    #expect(misnamed?.description.contains("TLS with Redis at localhost:\(server.port)") == true)

    let strangers = try TestCertificates()
    let otherCA = try RedisTLS(caFile: strangers.caCertificate, certificateFile: nil, keyFile: nil)
    let unknownCA = #expect(throws: StoreError.self) {
      try connect("localhost", server, tls: otherCA)
    }
    #expect(unknownCA?.description.contains(RedisTLS.caFileVariable) == true)

    let plain = try RedisServer()
    let started = ContinuousClock.now
    let notTLS = #expect(throws: StoreError.self) { try connect("127.0.0.1", plain, tls: otherCA) }
    #expect(notTLS?.description.contains("TLS") == true, "\(String(describing: notTLS))")
    #expect(ContinuousClock.now - started < .seconds(6), "within the operation timeout")
  }

  @Test func certificateFilesOthersCanWriteAreRefused() throws {
    let certificates = try TestCertificates()
    chmod(certificates.caCertificate, 0o666)
    let writable = #expect(throws: StoreError.self) {
      try RedisTLS(caFile: certificates.caCertificate, certificateFile: nil, keyFile: nil)
    }
    #expect(writable?.description.contains("can be written by other users") == true)
    let half = #expect(throws: StoreError.self) {
      try RedisTLS(caFile: nil, certificateFile: certificates.clientCertificate, keyFile: nil)
    }
    #expect(half?.description.contains(RedisTLS.keyFileVariable) == true)
    let missing = #expect(throws: StoreError.self) {
      try RedisTLS(caFile: "/nonexistent/ca.pem", certificateFile: nil, keyFile: nil)
    }
    #expect(missing?.description.contains("REDIS_TLS_CA_FILE=/nonexistent/ca.pem") == true)
  }
}
