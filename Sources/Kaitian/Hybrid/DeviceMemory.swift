/// `count` elements from element `offset` of the application's buffer `buffer`.
///
/// Why a handle and not a pointer: a group's library works on device memory (a CUDA, MLU or
/// NPU tensor) that the engine can neither address nor allocate. The hierarchical algorithm
/// only needs to name parts of the caller's buffer; the vendor layer turns a region into
/// whatever its library takes (a slice of a torch tensor, a device pointer), and `HybridMemory`
/// stages one into host memory for the relay between groups.
public struct DeviceRegion: Sendable, Equatable, CustomStringConvertible {
  /// The application's name for a buffer: an address for host memory (`HostMemory`), or an
  /// id the application chose.
  public var buffer: UInt64
  public var offset: Int
  public var count: Int

  public init(buffer: UInt64, offset: Int = 0, count: Int) {
    self.buffer = buffer
    self.offset = offset
    self.count = count
  }

  /// `count` elements from element `offset` of this region.
  func slice(_ offset: Int, _ count: Int) -> DeviceRegion {
    DeviceRegion(buffer: buffer, offset: self.offset + offset, count: count)
  }

  public var description: String { "buffer \(buffer) [\(offset) ..< \(offset + count)]" }
}

/// How the engine reaches a region's elements in host memory, for the relay between groups.
///
/// Each use is `hostView`, the engine's collective on that memory, then `commit`, on one stage
/// thread; the stages may do so at the same time for different regions. For host memory the
/// view is the region itself and `commit` does nothing; for device memory the view is a staging
/// copy (pinned, for CUDA) and `commit` copies it back.
public protocol HybridMemory: Sendable {
  /// Host memory holding the region's elements, valid until `commit`.
  func hostView(_ region: DeviceRegion, dataType: DataType) throws(KaitianError)
    -> UnsafeMutableRawPointer
  /// The engine has written `view` (from `hostView(region)`): the region must now hold it.
  func commit(
    _ view: UnsafeMutableRawPointer, to region: DeviceRegion, dataType: DataType
  ) throws(KaitianError)
}

extension HybridMemory {
  /// Runs `body` on the region's elements in host memory, then commits what it wrote. An empty
  /// region asks the application for nothing (it may have no memory to show): `body` gets a
  /// pointer it must not touch, as the engine's collectives of 0 elements do not.
  func withHostView(
    _ region: DeviceRegion, dataType: DataType,
    _ body: (UnsafeMutableRawPointer) throws(KaitianError) -> Void
  ) throws(KaitianError) {
    guard region.count > 0 else {
      try body(emptyView)
      return
    }
    let view = try hostView(region, dataType: dataType)
    try body(view)
    try commit(view, to: region, dataType: dataType)
  }
}

/// Stands in for the memory of an empty region; nothing is read or written through it.
nonisolated(unsafe) private let emptyView = UnsafeMutableRawPointer.allocate(
  byteCount: 16, alignment: 16)

/// Buffers that are host addresses: the Swift API's, and a C caller's that passes none of its
/// own memory functions.
public struct HostMemory: HybridMemory {
  public init() {}

  public static func region(_ pointer: UnsafeRawPointer, count: Int) -> DeviceRegion {
    DeviceRegion(buffer: UInt64(UInt(bitPattern: pointer)), count: count)
  }

  public func hostView(
    _ region: DeviceRegion, dataType: DataType
  ) throws(KaitianError) -> UnsafeMutableRawPointer {
    guard let base = UnsafeMutableRawPointer(bitPattern: UInt(region.buffer)) else {
      throw .invalidArgument("buffer 0 is not a host address")
    }
    return base + region.offset * dataType.size
  }

  public func commit(
    _ view: UnsafeMutableRawPointer, to region: DeviceRegion, dataType: DataType
  ) throws(KaitianError) {}
}
