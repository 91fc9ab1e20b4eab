import Glibc
import KaitianAuth
import KaitianPOSIX
import KaitianStore

/// Where a Redis server is and how to log in: `redis://[[user]:password@]host[:port][/db]`, or
/// `rediss://...` for Redis over TLS (see `RedisTLS` for the certificates).
///
/// The password is kept out of `description` so that the URL can appear in logs and errors.
public struct RedisURL: Sendable, Equatable, CustomStringConvertible {
  public static let scheme = "redis://"
  /// The scheme of Redis over TLS, as redis-cli, redis-py and the hosted services spell it.
  public static let tlsScheme = "rediss://"
  public static let defaultPort: UInt16 = 6379

  public var host: String
  public var port: UInt16
  /// The ACL user for `AUTH user password`; nil sends `AUTH password` (the default user).
  public var user: String?
  public var password: String?
  public var database: Int
  /// Whether the connection runs over TLS (`rediss://`).
  public var usesTLS: Bool

  public init(
    host: String, port: UInt16 = defaultPort, user: String? = nil, password: String? = nil,
    database: Int = 0, usesTLS: Bool = false
  ) {
    self.host = host
    self.port = port
    self.user = user
    self.password = password
    self.database = database
    self.usesTLS = usesTLS
  }

  /// Whether `text` is meant as a Redis URL (either scheme), for callers that pick a store.
  public static func isRedisURL(_ text: String) -> Bool {
    text.hasPrefix(scheme) || text.hasPrefix(tlsScheme)
  }

  /// Parses the URL form; throws `.invalidArgument` naming what is wrong.
  public init(parsing text: String) throws(StoreError) {
    guard Self.isRedisURL(text) else {
      throw Self.invalid(text, "it does not start with \(Self.scheme) or \(Self.tlsScheme)")
    }
    let usesTLS = text.hasPrefix(Self.tlsScheme)
    var rest = Substring(text.dropFirst(usesTLS ? Self.tlsScheme.count : Self.scheme.count))
    var user: String?
    var password: String?
    if let at = rest.lastIndex(of: "@") {
      let credentials = rest[..<at]
      rest = rest[rest.index(after: at)...]
      if let colon = credentials.firstIndex(of: ":") {
        let name = credentials[..<colon]
        user = name.isEmpty ? nil : String(name)
        password = String(credentials[credentials.index(after: colon)...])
      } else {
        password = String(credentials)
      }
    }
    var database = 0
    if let slash = rest.firstIndex(of: "/") {
      let text = rest[rest.index(after: slash)...]
      guard let number = Int(text), number >= 0 else {
        throw Self.invalid(text, "the database after / must be a number 0 or more")
      }
      database = number
      rest = rest[..<slash]
    }
    let endpoint: Endpoint
    do {
      endpoint =
        rest.contains(":") && !(rest.hasPrefix("[") && rest.hasSuffix("]"))
        ? try Endpoint(parsing: String(rest))
        : Endpoint(host: String(rest.trimmingBrackets), port: Self.defaultPort)
    } catch {
      throw Self.invalid(text, "\(error)")
    }
    guard !endpoint.host.isEmpty else { throw Self.invalid(text, "the host is missing") }
    self.init(
      host: endpoint.host, port: endpoint.port, user: user, password: password,
      database: database, usesTLS: usesTLS)
  }

  /// `host:port`, as the messages name the server.
  public var server: String { Endpoint(host: host, port: port).description }

  public var description: String {
    let credentials = password == nil ? "" : "\(user ?? ""):***@"
    let database = database == 0 ? "" : "/\(database)"
    return "\(usesTLS ? Self.tlsScheme : Self.scheme)\(credentials)\(server)\(database)"
  }

  private static func invalid(_ text: some StringProtocol, _ reason: String) -> StoreError {
    // The URL itself may hold a password: only the part that is wrong is quoted.
    .foreign(
      .invalidArgument,
      "bad Redis URL (\(reason)); expected redis://[:password@]host[:port][/db] (or "
        + "rediss:// for TLS), e.g. redis://127.0.0.1:6379")
  }
}

extension Substring {
  fileprivate var trimmingBrackets: Substring {
    hasPrefix("[") && hasSuffix("]") ? dropFirst().dropLast() : self
  }
}

extension RedisURL {
  /// Environment variable holding the Redis password, for URLs without one.
  public static let passwordVariable = "REDIS_PASSWORD"
  /// Environment variable naming a file that holds the Redis password.
  public static let passwordFileVariable = "REDIS_PASSWORD_FILE"

  /// The password for a Redis URL that has none: REDIS_PASSWORD, else the file named by
  /// REDIS_PASSWORD_FILE, else nil. Why: a password written in the URL on a command line is
  /// shown by `ps` to every user of the host; the environment and a mode-0600 file are not.
  public static func passwordFromEnvironment() throws(StoreError) -> String? {
    if let password = EnvironmentVariable.value(passwordVariable) { return password }
    guard let path = EnvironmentVariable.value(passwordFileVariable) else { return nil }
    do throws(SecretFile.Failure) {
      return try SecretFile.read(path, what: "Redis password")
    } catch {
      switch error {
      case .unreadable(let code):
        throw .foreign(
          .invalidArgument,
          "cannot read the Redis password file (\(passwordFileVariable)=\(path)): "
            + "\(errnoText(code))")
      case .tooLarge:
        throw .foreign(
          .invalidArgument,
          "the Redis password file (\(passwordFileVariable)=\(path)) is larger than "
            + "\(SecretFile.maximumBytes) bytes; it should hold only the password")
      }
    }
  }
}
