import CKaitianShim

/// The element types a collective moves. Raw values match `ktDataType_t` in include/kaitian.h
/// and `kt_dtype` in the C kernels, so a value crosses the C ABI unchanged.
public enum DataType: Int32, Sendable, CaseIterable, CustomStringConvertible {
  case int8 = 0
  case uint8 = 1
  case int32 = 2
  case int64 = 3
  case float16 = 4
  case float32 = 5
  case float64 = 6
  case bfloat16 = 7

  /// Bytes per element.
  public var size: Int {
    switch self {
    case .int8, .uint8: 1
    case .float16, .bfloat16: 2
    case .int32, .float32: 4
    case .int64, .float64: 8
    }
  }

  public var isFloatingPoint: Bool {
    switch self {
    case .float16, .bfloat16, .float32, .float64: true
    default: false
    }
  }

  public var description: String {
    switch self {
    case .int8: "int8"
    case .uint8: "uint8"
    case .int32: "int32"
    case .int64: "int64"
    case .float16: "float16"
    case .float32: "float32"
    case .float64: "float64"
    case .bfloat16: "bfloat16"
    }
  }

  /// Parses the names printed by `description` plus the common aliases of torch and nccl-tests.
  public init?(name: String) {
    switch name.lowercased() {
    case "int8", "char": self = .int8
    case "uint8", "byte": self = .uint8
    case "int32", "int": self = .int32
    case "int64", "long": self = .int64
    case "float16", "half", "fp16": self = .float16
    case "float32", "float", "fp32": self = .float32
    case "float64", "double", "fp64": self = .float64
    case "bfloat16", "bf16": self = .bfloat16
    default: return nil
    }
  }
}

/// Reduction operators. Raw values match `ktRedOp_t` in include/kaitian.h (and nccl.h's order).
public enum ReduceOp: Int32, Sendable, CaseIterable, CustomStringConvertible {
  case sum = 0
  case prod = 1
  case max = 2
  case min = 3
  /// Sum divided by the number of ranks; integers truncate toward zero.
  case avg = 4

  public var description: String {
    switch self {
    case .sum: "sum"
    case .prod: "prod"
    case .max: "max"
    case .min: "min"
    case .avg: "avg"
    }
  }

  public init?(name: String) {
    guard let op = Self.allCases.first(where: { $0.description == name.lowercased() }) else {
      return nil
    }
    self = op
  }

  /// The operator the element kernel applies; `avg` reduces as a sum and divides once at the end.
  var kernelOp: Int32 {
    switch self {
    case .avg: ReduceOp.sum.rawValue
    default: rawValue
    }
  }
}

/// Element-wise kernels for one (dtype, op) pair; the hot loops live in C (kt_reduce.c).
struct ReductionKernel: Sendable {
  let dataType: DataType
  let op: ReduceOp

  /// dst = a op b over `count` elements; dst may be exactly a or b.
  func combine(
    into dst: UnsafeMutableRawPointer, _ a: UnsafeRawPointer, _ b: UnsafeRawPointer, count: Int
  ) {
    guard count > 0 else { return }
    kt_reduce(dataType.rawValue, op.kernelOp, dst, a, b, count)
  }

  /// Finishes an average: divides by the number of contributions. A no-op for other operators.
  func finish(_ buffer: UnsafeMutableRawPointer, count: Int, contributors: Int) {
    guard op == .avg, count > 0 else { return }
    kt_divide(dataType.rawValue, buffer, count, Int64(contributors))
  }
}
