import Kaitian
import KaitianAuth
import KaitianHeader

/// What ktCommInitRank takes from a ktConfig_t: options and job token, starting from the
/// environment (KAITIAN_*) so that a zero or NULL field keeps the environment's value.
struct CommunicatorSettings {
  var options: CommunicatorOptions
  var token: JobToken

  init(_ config: UnsafePointer<ktConfig_t>?, _ arguments: Arguments) throws(KaitianError) {
    options = try CommunicatorOptions.fromEnvironment()
    guard let config else {
      token = try arguments.token(nil, "config.token")
      return
    }
    // Read `size` alone first: a smaller struct from another header version ends before the
    // fields this one reads. A larger one (a newer header) has these fields at the same places.
    let size = UnsafeRawPointer(config).load(as: Int.self)
    guard size >= MemoryLayout<ktConfig_t>.size else {
      throw arguments.invalid(
        "config.size is \(size), less than sizeof(ktConfig_t) = \(MemoryLayout<ktConfig_t>.size);"
          + " start from KT_CONFIG_INITIALIZER")
    }
    let fields = config.pointee
    guard Int(fields.version) / 10_000 == KaitianVersion.major else {
      throw arguments.invalid(
        "config.version \(fields.version) is from major version \(fields.version / 10_000), "
          + "but this library is \(KaitianVersion.string); rebuild against its kaitian.h")
    }
    token = try arguments.token(fields.token, "config.token")
    if let text = Self.text(fields.storePrefix) { options.storePrefix = text }
    if let text = Self.text(fields.hostId) { options.hostIdentity = text }
    if let text = Self.text(fields.socketAddr) { options.advertisedHost = text }
    options.transport = try Self.transport(fields.transport, default: options.transport, arguments)
    if fields.timeoutSeconds.isNaN { throw arguments.invalid("config.timeoutSeconds is NaN") }
    if fields.timeoutSeconds > 0 { options.timeoutSeconds = fields.timeoutSeconds }
  }

  /// A string field, where NULL and "" both mean "not set".
  private static func text(_ pointer: UnsafePointer<CChar>?) -> String? {
    guard let pointer, pointer.pointee != 0 else { return nil }
    return String(cString: pointer)
  }

  private static func transport(
    _ raw: Int32, default value: CommunicatorOptions.Transport, _ arguments: Arguments
  ) throws(KaitianError) -> CommunicatorOptions.Transport {
    switch ktTransport_t(rawValue: raw) {
    case ktTransportDefault: value
    case ktTransportAuto: .auto
    case ktTransportTcp: .tcp
    case ktTransportShm: .shm
    default:
      throw arguments.invalid("config.transport \(raw) is not a ktTransport_t (-1 to 2)")
    }
  }
}
