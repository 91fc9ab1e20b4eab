import CKaitianShim
import Kaitian

/// Typed host memory for checks: values go in and out as Double, stored in the buffer's dtype.
public final class ElementBuffer: @unchecked Sendable {
  public let dataType: DataType
  public let count: Int
  public let raw: UnsafeMutableRawPointer

  public init(_ dataType: DataType, count: Int, fill: (Int) -> Double = { _ in 0 }) {
    self.dataType = dataType
    self.count = count
    raw = .allocate(byteCount: max(count * dataType.size, 8), alignment: 64)
    for index in 0..<count { self[index] = fill(index) }
  }

  deinit { raw.deallocate() }

  public var bytes: [UInt8] {
    Array(UnsafeRawBufferPointer(start: raw, count: count * dataType.size))
  }

  public subscript(index: Int) -> Double {
    get {
      let at = raw + index * dataType.size
      switch dataType {
      case .int8: return Double(at.load(as: Int8.self))
      case .uint8: return Double(at.load(as: UInt8.self))
      case .int32: return Double(at.load(as: Int32.self))
      case .int64: return Double(at.load(as: Int64.self))
      case .float16: return Double(kt_half_to_float(at.load(as: UInt16.self)))
      case .bfloat16: return Double(kt_bfloat16_to_float(at.load(as: UInt16.self)))
      case .float32: return Double(at.load(as: Float.self))
      case .float64: return at.load(as: Double.self)
      }
    }
    set {
      let at = raw + index * dataType.size
      switch dataType {
      case .int8: at.storeBytes(of: Int8(newValue), as: Int8.self)
      case .uint8: at.storeBytes(of: UInt8(newValue), as: UInt8.self)
      case .int32: at.storeBytes(of: Int32(newValue), as: Int32.self)
      case .int64: at.storeBytes(of: Int64(newValue), as: Int64.self)
      case .float16: at.storeBytes(of: kt_float_to_half(Float(newValue)), as: UInt16.self)
      case .bfloat16: at.storeBytes(of: kt_float_to_bfloat16(Float(newValue)), as: UInt16.self)
      case .float32: at.storeBytes(of: Float(newValue), as: Float.self)
      case .float64: at.storeBytes(of: newValue, as: Double.self)
      }
    }
  }
}

/// Inputs whose reductions are exact in every dtype for up to 8 ranks, and the expected
/// results, computed independently of the engine (used by the tests and `kaitian bench --check`).
public enum Reference {
  public static func value(rank: Int, index: Int, dataType: DataType, op: ReduceOp) -> Double {
    let signed = dataType != .uint8
    switch op {
    case .sum, .avg:
      let v = Double((rank * 7 + index * 3) % 5)
      return signed ? v - 2 : v
    case .prod:
      if signed && (rank + index) % 4 == 3 { return -1 }
      return (rank + index) % 3 == 0 ? 2 : 1
    case .min, .max:
      let v = Double((rank * 5 + index * 7) % 11)
      return signed ? v - 5 : v
    }
  }

  public static func reduce(_ values: [Double], dataType: DataType, op: ReduceOp) -> Double {
    switch op {
    case .sum: return values.reduce(0, +)
    case .prod: return values.reduce(1, *)
    case .min: return values.min()!
    case .max: return values.max()!
    case .avg:
      let sum = values.reduce(0, +)
      let n = values.count
      switch dataType {
      case .int8, .uint8, .int32, .int64: return Double(Int(sum) / n)
      case .float32: return Double(Float(sum) / Float(n))
      case .float64: return sum / Double(n)
      case .float16: return Double(kt_half_to_float(kt_float_to_half(Float(sum) / Float(n))))
      case .bfloat16:
        return Double(kt_bfloat16_to_float(kt_float_to_bfloat16(Float(sum) / Float(n))))
      }
    }
  }

  /// The reduction over all ranks of element `index`.
  public static func reduced(index: Int, size: Int, dataType: DataType, op: ReduceOp) -> Double {
    reduce(
      (0..<size).map { value(rank: $0, index: index, dataType: dataType, op: op) },
      dataType: dataType, op: op)
  }
}

public struct Mismatch: Error, CustomStringConvertible {
  public let description: String
}

/// Throws naming the first element of `buffer` that differs from `expected`.
public func expectElements(
  _ buffer: ElementBuffer, _ what: String, count: Int? = nil, _ expected: (Int) -> Double
) throws {
  for index in 0..<(count ?? buffer.count) where buffer[index] != expected(index) {
    throw Mismatch(
      description: "\(what): element \(index) is \(buffer[index]), expected \(expected(index))")
  }
}

/// Runs a matrix's checks one by one, keeping each wrong result and going on, so that one wrong
/// case does not hide the others; `finish` throws them all. Any other error (the engine's)
/// stops at once, since a failed collective leaves the ranks out of step; it is thrown with the
/// wrong results found before it, which are often its cause.
///
/// Every check runs all of its collectives before it throws, so every rank still issues the same
/// calls in the same order after a wrong result on one of them.
public struct MismatchLog {
  private var found: [Mismatch] = []

  public init() {}

  public mutating func check(_ body: () throws -> Void) throws {
    do {
      try body()
    } catch let mismatch as Mismatch {
      found.append(mismatch)
    } catch {
      guard !found.isEmpty else { throw error }
      throw Mismatch(description: "\(error), after \(summary)")
    }
  }

  public func finish() throws {
    guard !found.isEmpty else { return }
    throw Mismatch(description: summary)
  }

  private var summary: String {
    "\(found.count) wrong case(s): " + found.map(\.description).joined(separator: "; ")
  }
}
