import ArgumentParser
import KaitianRedis
import KaitianStore

/// The rendezvous store of one `kaitian run` job: the embedded store server this command
/// starts, or the Redis of `--store redis://...`, where the job's keys live under
/// `kaitian/<job id>/`.
final class JobStore {
  /// How long a finished job's keys stay in Redis, so that a monitor can still read them.
  static let finishedJobTTL: Duration = .seconds(3600)

  /// What workers get in KAITIAN_STORE (for Redis, with the password of the URL).
  let address: String
  /// The store as the launcher's own lines name it (never with a password).
  let description: String
  private let server: StoreServer?
  private let redis: RedisStore?

  /// Checks a `--store` option without connecting: only Redis URLs are taken.
  static func parse(_ option: String) throws(ValidationError) -> RedisURL {
    let address: StoreLocator.Address
    do {
      address = try StoreLocator.parse(option)
    } catch {
      throw ValidationError("--store: \(error)")
    }
    guard case .redis(let url) = address else {
      throw ValidationError(
        "--store takes a Redis URL, redis://[:password@]host[:port][/db]; without --store, "
          + "kaitian run serves the job's store itself")
    }
    return url
  }

  /// Starts the embedded store on 127.0.0.1, or connects to Redis and marks the job there.
  init(option: String?, jobID: String, token: JobToken) throws {
    if let option {
      let url = try Self.parse(option)
      redis = try RedisStore(
        url: url, prefix: RedisStore.prefix(jobID: jobID), connectTimeout: .seconds(10))
      server = nil
      address = option
      description = "\(url) under \(RedisStore.prefix(jobID: jobID))"
    } else {
      let server = StoreServer(host: "127.0.0.1", port: 0, token: token)
      let port = try server.start()
      self.server = server
      redis = nil
      address = "127.0.0.1:\(port)"
      description = address
    }
  }

  /// Stops the embedded store, or lets the job's Redis keys expire after `finishedJobTTL`.
  /// Returns a warning to show when Redis could not be told (its keys still expire after the
  /// job TTL).
  func close() -> String? {
    server?.stop()
    guard let redis else { return nil }
    do {
      try redis.finish(expireAfter: Self.finishedJobTTL)
      return nil
    } catch {
      return "could not shorten the TTL of the job's keys in Redis (\(error)); they expire "
        + "\(RedisStore.defaultJobTTL.components.seconds / 3600) h after their last write"
    }
  }
}
