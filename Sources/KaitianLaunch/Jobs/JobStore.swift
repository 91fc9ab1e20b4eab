import KaitianAuth
import KaitianPOSIX
import KaitianRedis
import KaitianStore

/// The store of one `kaitian run` job, what its workers get in KAITIAN_STORE, and, with several
/// nodes, the launchers' rendezvous through it. Three shapes:
/// - one host, no --store: an embedded store server on 127.0.0.1 (random port);
/// - several hosts, no --store: node 0 serves the embedded store on --store-port and every
///   node (node 0 too) connects to it as a client;
/// - --store redis://...: every node connects to Redis, where the job's keys live under
///   `kaitian/<job id>/` and expire after the job.
package final class JobStore {
  /// How long a finished job's keys stay in Redis, so that a monitor can still read them.
  package static let finishedJobTTL: Duration = .seconds(3600)

  /// What workers get in KAITIAN_STORE (for Redis, with the password of the URL).
  package let address: String
  /// The store as the launcher's own lines name it (never with a password).
  package let description: String
  /// This launcher's own connection to the store (the job record writes through it).
  package let client: any KeyValueStore
  /// The launchers' rendezvous, with several nodes.
  package let rendezvous: NodeRendezvous?
  /// This host's address on its connection to the store (several nodes only).
  package let localAddress: String?
  private let server: StoreServer?
  private let redis: RedisStore?

  private init(
    address: String, description: String, client: any KeyValueStore,
    rendezvous: NodeRendezvous?, localAddress: String?, server: StoreServer?, redis: RedisStore?
  ) {
    self.client = client
    self.address = address
    self.description = description
    self.rendezvous = rendezvous
    self.localAddress = localAddress
    self.server = server
    self.redis = redis
  }

  /// Checks a `--store` option without connecting: only Redis URLs are taken.
  package static func parse(_ option: String) throws(UsageError) -> RedisURL {
    let address: StoreLocator.Address
    do {
      address = try StoreLocator.parse(option)
    } catch {
      throw UsageError("--store: \(error)")
    }
    guard case .redis(let url) = address else {
      throw UsageError(
        "--store takes a Redis URL, redis://[:password@]host[:port][/db] or rediss:// for TLS; "
          + "without --store, kaitian run serves the job's store itself")
    }
    return url
  }

  /// Opens the job's store for this node (see the type's shapes).
  package static func open(
    option: String?, placement: NodePlacement, storePort: UInt16, joinTimeout: Double,
    jobID: String, token: JobToken
  ) throws -> JobStore {
    if let option {
      let url = try parse(option)
      if url.password != nil {
        Log.warn(
          "run",
          "the Redis password in --store is visible to every user of this host (ps "
            + "shows command lines); set \(RedisURL.passwordVariable) or "
            + "\(RedisURL.passwordFileVariable) instead")
      }
      let prefix = RedisStore.prefix(jobID: jobID)
      let redis = try RedisStore(url: url, prefix: prefix, connectTimeout: .seconds(10))
      return JobStore(
        address: option, description: "\(url) under \(prefix)", client: redis,
        rendezvous: rendezvous(redis, placement: placement, jobID: jobID),
        localAddress: placement.nodeCount > 1 ? redis.localHost : nil, server: nil, redis: redis)
    }
    guard placement.nodeCount > 1 else {
      let server = StoreServer(host: "127.0.0.1", port: 0, token: token)
      let address = "127.0.0.1:\(try server.start())"
      do {
        let client = try StoreClient.connect(
          address: address, token: token, connectTimeout: .seconds(10), clientName: "kaitian run")
        return JobStore(
          address: address, description: address, client: client, rendezvous: nil,
          localAddress: nil, server: server, redis: nil)
      } catch {
        server.stop()
        throw error
      }
    }
    var server: StoreServer?
    if placement.nodeRank == 0 {
      let local = StoreServer(host: "0.0.0.0", port: storePort, token: token)
      do {
        _ = try local.start()
      } catch {
        throw LaunchError(
          "node 0 cannot serve the store on port \(storePort): \(error) (pick another "
            + "--store-port, the same on every node)")
      }
      server = local
    }
    let address = Endpoint(host: placement.masterAddress, port: storePort).description
    let client: StoreClient
    do {
      client = try StoreClient(
        host: placement.masterAddress, port: storePort, token: token,
        connectTimeout: .milliseconds(Int64(joinTimeout * 1000)),
        clientName: "kaitian run node \(placement.nodeRank)")
    } catch {
      server?.stop()
      throw LaunchError(
        "node \(placement.nodeRank) cannot reach the store of node 0 at \(address) within "
          + "\(Int(joinTimeout)) s: \(error)")
    }
    return JobStore(
      address: address, description: address, client: client,
      rendezvous: rendezvous(client, placement: placement, jobID: jobID),
      localAddress: client.localAddress.host, server: server, redis: nil)
  }

  private static func rendezvous(
    _ store: any KeyValueStore, placement: NodePlacement, jobID: String
  ) -> NodeRendezvous? {
    guard placement.nodeCount > 1 else { return nil }
    return NodeRendezvous(
      store: store, jobID: jobID, nodeRank: placement.nodeRank, nodeCount: placement.nodeCount)
  }

  /// Stops the embedded store, or lets the job's Redis keys expire after `finishedJobTTL`.
  /// Returns a warning to show when Redis could not be told (its keys still expire after the
  /// job TTL).
  package func close() -> String? {
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
