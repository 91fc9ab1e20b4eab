import KaitianAuth
import KaitianPOSIX
import KaitianStore

/// Turns a store address, as in `KAITIAN_STORE`, into a connected store, so that workers reach
/// Kaitian's embedded store and Redis by the same variable.
public enum StoreLocator {
  /// What an address names.
  public enum Address: Sendable, Equatable {
    /// Kaitian's own store server at `host:port` (or `[v6]:port`); needs the job token.
    case embedded(String)
    /// A Redis server; keys go under the job's prefix.
    case redis(RedisURL)
  }

  /// Parses `text` without connecting; throws `.invalidArgument` naming what is wrong.
  public static func parse(_ text: String) throws(StoreError) -> Address {
    if RedisURL.isRedisURL(text) { return .redis(try RedisURL(parsing: text)) }
    guard !text.contains("://") else {
      throw .foreign(
        .invalidArgument,
        "unknown store address scheme in '\(text.prefix(while: { $0 != ":" }))://...'; use "
          + "host:port for Kaitian's store or redis://[:password@]host[:port][/db] (rediss:// for TLS)"
      )
    }
    do {
      _ = try Endpoint(parsing: text)
    } catch {
      throw .foreign(.invalidArgument, "bad store address: \(error)")
    }
    return .embedded(text)
  }

  /// Connects to the store at `address`.
  ///
  /// - Parameters:
  ///   - token: only for the embedded store: a `nil` token is refused by its server.
  ///   - jobID: only for Redis: the job whose keys to use (`kaitian/<job id>/`); required there
  ///     because one Redis serves many jobs.
  public static func connect(
    _ address: Address, token: JobToken?, jobID: String?, connectTimeout: Duration,
    clientName: String = ""
  ) throws(StoreError) -> any KeyValueStore {
    switch address {
    case .embedded(let text):
      return try StoreClient.connect(
        address: text, token: token, connectTimeout: connectTimeout, clientName: clientName)
    case .redis(let url):
      guard let jobID, !jobID.isEmpty else {
        throw .foreign(
          .invalidArgument,
          "a Redis store (\(url)) needs the job id for its key prefix: set KAITIAN_JOB_ID "
            + "(kaitian run sets it for its workers)")
      }
      return try RedisStore(
        url: url, prefix: RedisStore.prefix(jobID: jobID), connectTimeout: connectTimeout)
    }
  }
}
