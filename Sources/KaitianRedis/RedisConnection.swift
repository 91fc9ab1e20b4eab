import Glibc
import KaitianPOSIX
import KaitianStore
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import Synchronization

/// Why a request got no reply, before it is worded for users by `RedisConnection`.
enum RedisFailure: Error, Sendable {
  case closed
  case timedOut
  case unsolicitedReply
  case invalidReply(RESPProtocolError)
  case io(String)
  /// The TLS handshake or a TLS record failed (`rediss://`).
  case tls(String)
}

/// A command and where its reply goes.
struct RESPRequest: Sendable {
  let command: RESPCommand
  let promise: EventLoopPromise<RESPValue>
}

/// Matches replies to requests in order (Redis answers in order on one connection) and fails
/// every waiting request at once when the connection breaks, so no caller is left hanging.
final class RESPClientHandler: ChannelDuplexHandler {
  typealias InboundIn = RESPValue
  typealias OutboundIn = RESPRequest
  typealias OutboundOut = RESPCommand

  private var pending = CircularBuffer<EventLoopPromise<RESPValue>>()

  func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
    let request = unwrapOutboundIn(data)
    pending.append(request.promise)
    context.write(wrapOutboundOut(request.command), promise: promise)
  }

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    guard let promise = pending.popFirst() else {
      fail(context: context, .unsolicitedReply)
      return
    }
    promise.succeed(unwrapInboundIn(data))
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    switch error {
    case let error as RESPProtocolError: fail(context: context, .invalidReply(error))
    case is ByteToMessageDecoderError: fail(context: context, .closed)
    case is NIOSSLError, is NIOSSLExtraError, is BoringSSLError:
      fail(context: context, .tls("\(error)"))
    default: fail(context: context, .io("\(error)"))
    }
  }

  func channelInactive(context: ChannelHandlerContext) {
    failAll(.closed)
    context.fireChannelInactive()
  }

  private func fail(context: ChannelHandlerContext, _ failure: RedisFailure) {
    failAll(failure)
    context.close(promise: nil)
  }

  private func failAll(_ failure: RedisFailure) {
    while let promise = pending.popFirst() { promise.fail(failure) }
  }
}

/// Notes whether the TLS handshake of a `rediss://` connection completed, and why it failed.
/// Why: until it completes, every failure is a TLS failure, whatever the request saw first (a
/// closed channel, or, from a plain-TCP Redis that never answers a TLS hello, a timeout).
final class TLSHandshakeWatcher: ChannelInboundHandler, Sendable {
  typealias InboundIn = NIOAny
  private let state = Mutex<(complete: Bool, failure: String?)>((false, nil))

  /// Why the handshake has not completed, or nil once it has.
  var incompleteReason: String? {
    state.withLock { $0.complete ? nil : $0.failure ?? "the TLS handshake did not complete" }
  }

  func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
    if case .handshakeCompleted = event as? TLSUserEvent {
      state.withLock { $0.complete = true }
    }
    context.fireUserInboundEventTriggered(event)
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    state.withLock { state in
      if !state.complete && state.failure == nil { state.failure = "\(error)" }
    }
    context.fireErrorCaught(error)
  }
}

/// One TCP connection to Redis with a blocking request API for the engine's threads.
///
/// Each request has a deadline; when it passes, or the connection breaks, or the server sends
/// bytes that are not RESP, the connection is closed and the caller gets a `StoreError` that
/// names the server and the command.
final class RedisConnection: Sendable {
  let url: RedisURL
  private let channel: any Channel
  /// Set for a `rediss://` connection.
  private let handshake: TLSHandshakeWatcher?

  private init(url: RedisURL, channel: any Channel, handshake: TLSHandshakeWatcher?) {
    self.url = url
    self.channel = channel
    self.handshake = handshake
  }

  /// The local address of the connection, the interface that reaches Redis.
  var localHost: String? { channel.localAddress?.ipAddress }

  /// Connects, retrying refused connections until `connectTimeout` (the server may start after
  /// this process), then logs in with the URL's password and selects its database. A
  /// `rediss://` URL runs over TLS with `tls`, or with the settings in the environment.
  static func open(
    _ url: RedisURL, limits: RESPLimits, connectTimeout: Duration, operationTimeout: Duration,
    tls: RedisTLS? = nil
  ) throws(StoreError) -> RedisConnection {
    let settings: RedisTLS?
    if !url.usesTLS {
      settings = nil
    } else if let tls {
      settings = tls
    } else {
      settings = try RedisTLS.fromEnvironment()
    }
    let end = ContinuousClock.now + connectTimeout
    var pause = Duration.milliseconds(20)
    while true {
      let remaining = end - ContinuousClock.now
      let watcher = settings == nil ? nil : TLSHandshakeWatcher()
      let bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connectTimeout(.nanoseconds(max(1_000_000, remaining.nanoseconds)))
        .channelInitializer { channel in
          channel.eventLoop.makeCompletedFuture {
            if let settings, let watcher {
              try channel.pipeline.syncOperations.addHandlers([
                try settings.handler(host: url.host), watcher,
              ])
            }
            try channel.pipeline.syncOperations.addHandlers([
              ByteToMessageHandler(RESPDecoder(limits: limits)),
              MessageToByteHandler(RESPEncoder()), RESPClientHandler(),
            ])
          }
        }
      do {
        let channel = try bootstrap.connect(host: url.host, port: Int(url.port)).wait()
        let connection = RedisConnection(url: url, channel: channel, handshake: watcher)
        try connection.logIn(timeout: operationTimeout)
        return connection
      } catch let error as StoreError {
        throw error
      } catch {
        guard ContinuousClock.now + pause < end else {
          throw StoreError.foreign(
            .connectionFailed,
            "cannot connect to Redis at \(url.server) (\(reason(error))) within "
              + "\(connectTimeout.secondsDescription); check that redis-server runs there and "
              + "that the address in the store URL is right")
        }
        sleep(for: pause)
        pause = min(pause * 2, .milliseconds(500))
      }
    }
  }

  /// The system's word for a failed connect ("Connection refused") where there is one.
  private static func reason(_ error: any Error) -> String {
    let cause = (error as? NIOConnectionError)?.connectionErrors.first?.error ?? error
    if let error = cause as? IOError { return String(cString: strerror(error.errnoCode)) }
    return "\(cause)"
  }

  private func logIn(timeout: Duration) throws(StoreError) {
    if let password = url.password {
      var arguments = [Array("AUTH".utf8)]
      if let user = url.user { arguments.append(Array(user.utf8)) }
      arguments.append(Array(password.utf8))
      if case .error(let message) = try send(RESPCommand(arguments), timeout: timeout) {
        close()
        throw StoreError.foreign(
          .authenticationFailed,
          "Redis at \(url.server) refused the password (\(message)); set "
            + "\(RedisURL.passwordVariable) (or \(RedisURL.passwordFileVariable) to a file) to "
            + "the server's requirepass")
      }
    }
    if url.database != 0 {
      let reply = try send(RESPCommand("SELECT", "\(url.database)"), timeout: timeout)
      if case .error(let message) = reply {
        close()
        throw StoreError.foreign(
          .invalidArgument,
          "Redis at \(url.server) cannot select database \(url.database) (\(message)); use a "
            + "database number below the server's 'databases' setting")
      }
    }
    let reply = try send(RESPCommand("PING"), timeout: timeout)
    guard reply == .simple("PONG") else {
      close()
      if case .error(let message) = reply, message.hasPrefix("NOAUTH") {
        throw StoreError.foreign(
          .authenticationFailed,
          "Redis at \(url.server) needs a password (\(message)); set "
            + "\(RedisURL.passwordVariable) (or \(RedisURL.passwordFileVariable) to a file "
            + "holding it), or give it in the store URL as redis://:PASSWORD@\(url.server)")
      }
      throw StoreError.foreign(
        .protocolViolation,
        "Redis at \(url.server) answered PING with \(reply); is it a Redis server?")
    }
  }

  /// Sends `command` and waits at most `timeout` for its reply. Error replies are returned, not
  /// thrown: the caller knows what they mean.
  func send(_ command: RESPCommand, timeout: Duration) throws(StoreError) -> RESPValue {
    let promise = channel.eventLoop.makePromise(of: RESPValue.self)
    let timer = channel.eventLoop.scheduleTask(in: .nanoseconds(timeout.nanoseconds)) {
      promise.fail(RedisFailure.timedOut)
    }
    // A failed write fails the request: on a closed channel the pipeline has no handlers left
    // and nothing else would ever complete it.
    let written = channel.eventLoop.makePromise(of: Void.self)
    written.futureResult.whenFailure { error in
      promise.fail(error is ChannelError ? RedisFailure.closed : RedisFailure.io("\(error)"))
    }
    channel.writeAndFlush(RESPRequest(command: command, promise: promise), promise: written)
    do {
      let reply = try promise.futureResult.wait()
      timer.cancel()
      return reply
    } catch {
      timer.cancel()
      // The connection's state is unknown now (a late reply may still come): never reuse it.
      close()
      throw describe(error as? RedisFailure ?? .io("\(error)"), command: command, timeout: timeout)
    }
  }

  func close() {
    channel.close(promise: nil)
  }

  private func describe(
    _ failure: RedisFailure, command: RESPCommand, timeout: Duration
  ) -> StoreError {
    let server = "Redis at \(url.server)"
    var failure = failure
    if let reason = handshake?.incompleteReason {
      let plain = if case .timedOut = failure { ": is this a plain-TCP port?" } else { "" }
      failure = .tls(reason + plain)
    }
    switch failure {
    case .closed, .io:
      let cause = if case .io(let text) = failure { " (\(text))" } else { "" }
      return .foreign(
        .connectionLost,
        "\(server) closed the connection during \(command.name)\(cause) (restarted?); a "
          + "Redis that restarts without persistence loses the job's keys: restart the job")
    case .timedOut:
      return .foreign(
        .connectionLost,
        "\(server) did not answer \(command.name) within \(timeout.secondsDescription) (restarted? "
          + "overloaded?); the connection is closed: restart the job")
    case .tls(let text):
      return .foreign(
        .connectionFailed,
        "TLS with \(server) failed during \(command.name) (\(text)); check that the server "
          + "speaks TLS on this port (tls-port), that \(RedisTLS.caFileVariable) names the CA "
          + "that signed its certificate and the certificate names '\(url.host)', and, if the "
          + "server asks for client certificates, \(RedisTLS.certificateFileVariable) and "
          + "\(RedisTLS.keyFileVariable)")
    case .unsolicitedReply:
      return .foreign(
        .protocolViolation,
        "\(server) sent a reply nobody asked for after \(command.name); is it a Redis server? "
          + "The connection is closed")
    case .invalidReply(let error):
      return .foreign(
        .protocolViolation,
        "\(server) sent an invalid reply to \(command.name): \(error); is it a Redis server? "
          + "The connection is closed")
    }
  }
}
