import CKaitianShim
import KaitianTestSupport
import Testing

// Checks the C reduction kernels (kt_reduce.c) against plain Swift references.
// Every comparison is bitwise unless the kernel's contract leaves a NaN payload
// unspecified (float32/float64 sum, prod and divide), where both sides only
// have to be NaN.

/// Mirrors kt_dtype; `c` ties each case to the C constant rather than to a raw value.
enum DType: CaseIterable, Sendable, CustomTestStringConvertible {
  case int8, uint8, int32, int64, float16, float32, float64, bfloat16

  var c: Int32 {
    let value: kt_dtype
    switch self {
    case .int8: value = KT_DTYPE_INT8
    case .uint8: value = KT_DTYPE_UINT8
    case .int32: value = KT_DTYPE_INT32
    case .int64: value = KT_DTYPE_INT64
    case .float16: value = KT_DTYPE_FLOAT16
    case .float32: value = KT_DTYPE_FLOAT32
    case .float64: value = KT_DTYPE_FLOAT64
    case .bfloat16: value = KT_DTYPE_BFLOAT16
    }
    return Int32(value.rawValue)
  }

  var testDescription: String { "\(self)" }
}

/// Mirrors kt_redop.
enum Op: CaseIterable, Sendable, CustomTestStringConvertible {
  case sum, prod, max, min

  var c: Int32 {
    let value: kt_redop
    switch self {
    case .sum: value = KT_REDOP_SUM
    case .prod: value = KT_REDOP_PROD
    case .max: value = KT_REDOP_MAX
    case .min: value = KT_REDOP_MIN
    }
    return Int32(value.rawValue)
  }

  var testDescription: String { "\(self)" }
}

// MARK: - References

/// Max as the kernels define it: any NaN gives the default quiet NaN, and a tie
/// between -0 and +0 gives +0, so the result does not depend on argument order.
func referenceMax<F: BinaryFloatingPoint>(_ a: F, _ b: F) -> F {
  if a.isNaN || b.isNaN { return .nan }
  if a == b { return a.sign == .minus ? b : a }
  return a > b ? a : b
}

/// Min counterpart of referenceMax: a -0/+0 tie gives -0.
func referenceMin<F: BinaryFloatingPoint>(_ a: F, _ b: F) -> F {
  if a.isNaN || b.isNaN { return .nan }
  if a == b { return a.sign == .minus ? a : b }
  return a < b ? a : b
}

func referenceApply<F: BinaryFloatingPoint>(_ op: Op, _ a: F, _ b: F) -> F {
  switch op {
  case .sum: return a + b
  case .prod: return a * b
  case .max: return referenceMax(a, b)
  case .min: return referenceMin(a, b)
  }
}

func bfloat16Widen(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

/// Round-to-nearest-even to bfloat16 by comparing the dropped half of the bits
/// with the halfway point; NaN becomes the canonical 0x7fc0.
func bfloat16Reference(_ f: Float) -> UInt16 {
  if f.isNaN { return 0x7fc0 }
  let kept = f.bitPattern >> 16
  let dropped = f.bitPattern & 0xffff
  let roundUp = dropped > 0x8000 || (dropped == 0x8000 && kept & 1 == 1)
  return UInt16(kept + (roundUp ? 1 : 0))
}

// MARK: - Kernels under test

/// One dtype's element type, random inputs and references.
struct Kernel<T: BitwiseCopyable> {
  var dtype: DType
  var random: (inout SeededRandom) -> T
  var reduce: (Op, T, T) -> T
  var divide: (T, Int64) -> T
  var bits: (T) -> UInt64
  var isNaN: (T) -> Bool
  /// Whether reduce results must match bit for bit even when NaN.
  var exactNaN: (Op) -> Bool
}

func integerKernel<T: FixedWidthInteger & BitwiseCopyable>(_ dtype: DType, _: T.Type) -> Kernel<T> {
  let edges: [T] = [.min, .max, 0, 1, T(truncatingIfNeeded: -1), .max / 2 + 1]
  return Kernel(
    dtype: dtype,
    random: { rng in
      rng.next() % 8 == 0
        ? edges.randomElement(using: &rng)! : T.random(in: .min ... .max, using: &rng)
    },
    reduce: { op, a, b in
      switch op {
      case .sum: return a &+ b
      case .prod: return a &* b
      case .max: return Swift.max(a, b)
      case .min: return Swift.min(a, b)
      }
    },
    divide: { a, d in T(truncatingIfNeeded: Int64(a) / d) },
    bits: { UInt64(truncatingIfNeeded: $0) },
    isNaN: { _ in false },
    exactNaN: { _ in true })
}

func floatKernel<F: BinaryFloatingPoint & BitwiseCopyable>(
  _ dtype: DType, _: F.Type, bits: @escaping (F) -> UInt64, fromBits: @escaping (UInt64) -> F
) -> Kernel<F> {
  let specials: [F] = [
    0, -0.0, .infinity, -.infinity, .nan, -.nan, .signalingNaN, .leastNonzeroMagnitude,
    -.leastNonzeroMagnitude, .leastNormalMagnitude, .greatestFiniteMagnitude,
    -.greatestFiniteMagnitude, 1, -1,
  ]
  return Kernel(
    dtype: dtype,
    random: { rng in
      switch rng.next() % 8 {
      case 0: return specials.randomElement(using: &rng)!
      case 1, 2, 3: return fromBits(rng.next())
      default: return F(Double.random(in: -100...100, using: &rng))
      }
    },
    reduce: referenceApply,
    divide: { a, d in a / F(d) },
    bits: bits,
    isNaN: { $0.isNaN },
    exactNaN: { $0 == .max || $0 == .min })
}

let halfSpecials: [UInt16] = [
  0x0000, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0xfe00, 0x7d00, 0x0001, 0x8001, 0x03ff, 0x0400, 0x7bff,
  0xfbff, 0x3c00, 0xbc00,
]

func randomHalf(_ rng: inout SeededRandom) -> UInt16 {
  rng.next() % 8 == 0
    ? halfSpecials.randomElement(using: &rng)! : UInt16(truncatingIfNeeded: rng.next())
}

/// The reference is Swift's own Float16 arithmetic, which is correctly rounded.
var float16Kernel: Kernel<UInt16> {
  Kernel(
    dtype: .float16,
    random: randomHalf,
    reduce: { op, a, b in
      let r = referenceApply(op, Float16(bitPattern: a), Float16(bitPattern: b))
      return r.isNaN ? Float16.nan.bitPattern : r.bitPattern
    },
    divide: { a, d in Float16(Float(Float16(bitPattern: a)) / Float(d)).bitPattern },
    bits: { UInt64($0) },
    isNaN: { Float16(bitPattern: $0).isNaN },
    exactNaN: { _ in true })
}

var bfloat16Kernel: Kernel<UInt16> {
  Kernel(
    dtype: .bfloat16,
    random: randomHalf,
    reduce: { op, a, b in bfloat16Reference(referenceApply(op, bfloat16Widen(a), bfloat16Widen(b)))
    },
    divide: { a, d in bfloat16Reference(bfloat16Widen(a) / Float(d)) },
    bits: { UInt64($0) },
    isNaN: { bfloat16Widen($0).isNaN },
    exactNaN: { _ in true })
}

// MARK: - Calling the kernels

/// Where kt_reduce writes: a fresh buffer, over a, or over b.
enum Placement: CaseIterable {
  case separate, overA, overB
}

func runReduce<T: BitwiseCopyable>(
  _ dtype: DType, _ op: Op, _ a: [T], _ b: [T], into placement: Placement
) -> [T] {
  switch placement {
  case .separate:
    // Start from unrelated values the kernel has to overwrite.
    var out = Array(b.reversed())
    out.withUnsafeMutableBytes { o in
      a.withUnsafeBytes { pa in
        b.withUnsafeBytes { pb in
          kt_reduce(dtype.c, op.c, o.baseAddress, pa.baseAddress, pb.baseAddress, a.count)
        }
      }
    }
    return out
  case .overA:
    var out = a
    out.withUnsafeMutableBytes { o in
      b.withUnsafeBytes { pb in
        kt_reduce(dtype.c, op.c, o.baseAddress, o.baseAddress, pb.baseAddress, a.count)
      }
    }
    return out
  case .overB:
    var out = b
    out.withUnsafeMutableBytes { o in
      a.withUnsafeBytes { pa in
        kt_reduce(dtype.c, op.c, o.baseAddress, pa.baseAddress, o.baseAddress, a.count)
      }
    }
    return out
  }
}

func runDivide<T: BitwiseCopyable>(_ dtype: DType, _ data: [T], by divisor: Int64) -> [T] {
  var out = data
  out.withUnsafeMutableBytes { kt_divide(dtype.c, $0.baseAddress, data.count, divisor) }
  return out
}

/// Builds an array element by element. Tests run unoptimized, where this plain
/// loop is several times faster than `(0..<count).map`, which matters at a
/// million elements per case.
func makeArray<T>(_ count: Int, _ element: (Int) -> T) -> [T] {
  [T](unsafeUninitializedCapacity: count) { buffer, initialized in
    var i = 0
    while i < count {
      (buffer.baseAddress! + i).initialize(to: element(i))
      i += 1
    }
    initialized = count
  }
}

/// Records one failure per buffer (not per element) naming the first mismatch.
func expectSame<T>(
  _ actual: [T], _ expected: [T], _ context: String, inputs: (Int) -> String = { _ in "" },
  sourceLocation: SourceLocation = #_sourceLocation, matches: (T, T) -> Bool
) {
  #expect(actual.count == expected.count, "\(context): length", sourceLocation: sourceLocation)
  let count = min(actual.count, expected.count)
  var mismatches = 0
  var first = 0
  var i = 0
  while i < count {
    if !matches(actual[i], expected[i]) {
      if mismatches == 0 { first = i }
      mismatches += 1
    }
    i += 1
  }
  if mismatches > 0 {
    Issue.record(
      "\(context): \(mismatches) mismatches; first at \(first): got \(actual[first]), want \(expected[first]) \(inputs(first))",
      sourceLocation: sourceLocation)
  }
}

func checkReduce<T: BitwiseCopyable>(_ k: Kernel<T>, _ op: Op) {
  var rng = SeededRandom(seed: UInt64(k.dtype.c) << 8 | UInt64(op.c))
  let (random, reduce, bits, isNaN) = (k.random, k.reduce, k.bits, k.isNaN)
  let exact = k.exactNaN(op)
  for count in [0, 1, 7, 31, 1_000_003] {
    let a = makeArray(count) { _ in random(&rng) }
    let b = makeArray(count) { _ in random(&rng) }
    let expected = makeArray(count) { reduce(op, a[$0], b[$0]) }
    for placement in Placement.allCases {
      let actual = runReduce(k.dtype, op, a, b, into: placement)
      expectSame(
        actual, expected, "\(k.dtype) \(op) count \(count) \(placement)",
        inputs: { "for \(a[$0]), \(b[$0])" },
        matches: { bits($0) == bits($1) || (!exact && isNaN($0) && isNaN($1)) })
    }
  }
}

func checkDivide<T: BitwiseCopyable>(_ k: Kernel<T>) {
  var rng = SeededRandom(seed: 0xd1 << 8 | UInt64(k.dtype.c))
  let (random, divide, bits, isNaN) = (k.random, k.divide, k.bits, k.isNaN)
  for count in [0, 1, 7, 31, 1_000_003] {
    let data = makeArray(count) { _ in random(&rng) }
    for divisor: Int64 in [1, 2, 3, 7, 1000, .max] {
      expectSame(
        runDivide(k.dtype, data, by: divisor), makeArray(count) { divide(data[$0], divisor) },
        "\(k.dtype) / \(divisor) count \(count)", inputs: { "for \(data[$0])" },
        matches: { bits($0) == bits($1) || (isNaN($0) && isNaN($1)) })
    }
    for divisor: Int64 in [0, -1, .min] {
      expectSame(runDivide(k.dtype, data, by: divisor), data, "\(k.dtype) / \(divisor)") {
        bits($0) == bits($1)
      }
    }
  }
}

// MARK: - Tests

@Suite struct ReduceKernelTests {
  @Test(arguments: DType.allCases, Op.allCases)
  func reduceMatchesReference(dtype: DType, op: Op) {
    switch dtype {
    case .int8: checkReduce(integerKernel(dtype, Int8.self), op)
    case .uint8: checkReduce(integerKernel(dtype, UInt8.self), op)
    case .int32: checkReduce(integerKernel(dtype, Int32.self), op)
    case .int64: checkReduce(integerKernel(dtype, Int64.self), op)
    case .float16: checkReduce(float16Kernel, op)
    case .float32:
      checkReduce(
        floatKernel(
          dtype, Float.self, bits: { UInt64($0.bitPattern) },
          fromBits: { Float(bitPattern: UInt32(truncatingIfNeeded: $0)) }), op)
    case .float64:
      checkReduce(
        floatKernel(dtype, Double.self, bits: \.bitPattern, fromBits: { Double(bitPattern: $0) }),
        op)
    case .bfloat16: checkReduce(bfloat16Kernel, op)
    }
  }

  @Test(arguments: DType.allCases)
  func divideMatchesReference(dtype: DType) {
    switch dtype {
    case .int8: checkDivide(integerKernel(dtype, Int8.self))
    case .uint8: checkDivide(integerKernel(dtype, UInt8.self))
    case .int32: checkDivide(integerKernel(dtype, Int32.self))
    case .int64: checkDivide(integerKernel(dtype, Int64.self))
    case .float16: checkDivide(float16Kernel)
    case .float32:
      checkDivide(
        floatKernel(
          dtype, Float.self, bits: { UInt64($0.bitPattern) },
          fromBits: { Float(bitPattern: UInt32(truncatingIfNeeded: $0)) }))
    case .float64:
      checkDivide(
        floatKernel(dtype, Double.self, bits: \.bitPattern, fromBits: { Double(bitPattern: $0) }))
    case .bfloat16: checkDivide(bfloat16Kernel)
    }
  }

  @Test func dtypeSizes() {
    let sizes: [DType: Int] = [
      .int8: 1, .uint8: 1, .int32: 4, .int64: 8, .float16: 2, .float32: 4, .float64: 8,
      .bfloat16: 2,
    ]
    for (dtype, size) in sizes {
      #expect(kt_dtype_size(dtype.c) == size, "\(dtype)")
    }
    #expect(kt_dtype_size(-1) == 0)
    #expect(kt_dtype_size(8) == 0)
  }

  @Test func unknownDtypeOrOpLeavesDataAlone() {
    let a: [Float] = [1, 2, 3]
    let b: [Float] = [4, 5, 6]
    var out: [Float] = [7, 8, 9]
    let cases: [(dtype: Int32, op: Int32)] = [
      (8, 0), (-1, 0), (DType.float32.c, 4), (DType.int8.c, -1),
    ]
    for (dtype, op) in cases {
      out.withUnsafeMutableBytes { o in
        a.withUnsafeBytes { pa in
          b.withUnsafeBytes { pb in
            kt_reduce(dtype, op, o.baseAddress, pa.baseAddress, pb.baseAddress, 3)
          }
        }
      }
      #expect(out == [7, 8, 9], "dtype \(dtype) op \(op)")
    }
    for dtype: Int32 in [8, -1] {
      out.withUnsafeMutableBytes { kt_divide(dtype, $0.baseAddress, 3, 2) }
      #expect(out == [7, 8, 9], "dtype \(dtype)")
    }
  }

  @Test func integersWrapOnOverflow() {
    #expect(runReduce(.int8, .sum, [Int8.max, .min], [1, -1], into: .separate) == [.min, .max])
    #expect(runReduce(.int8, .prod, [Int8.min, 16], [-1, 8], into: .separate) == [.min, -128])
    #expect(runReduce(.uint8, .sum, [UInt8.max, 200], [1, 100], into: .separate) == [0, 44])
    #expect(runReduce(.uint8, .prod, [UInt8(16), 255], [16, 255], into: .separate) == [0, 1])
    #expect(runReduce(.int32, .sum, [Int32.max, .min], [1, -1], into: .separate) == [.min, .max])
    #expect(
      runReduce(.int32, .prod, [Int32.min, 65536], [-1, 65536], into: .separate) == [.min, 0])
    #expect(runReduce(.int64, .sum, [Int64.max, .min], [1, -1], into: .separate) == [.min, .max])
    #expect(runReduce(.int64, .prod, [Int64.min, .max], [-1, 2], into: .separate) == [.min, -2])
    #expect(runReduce(.int8, .max, [Int8.min, -1], [Int8.max, 0], into: .separate) == [.max, 0])
    #expect(runReduce(.uint8, .min, [UInt8(0), 255], [255, 128], into: .separate) == [0, 128])
  }

  @Test func integerDivideTruncatesTowardZero() {
    #expect(runDivide(.int8, [Int8.min, -7, 7, -1], by: 2) == [-64, -3, 3, 0])
    #expect(runDivide(.uint8, [UInt8(255), 7], by: 2) == [127, 3])
    #expect(runDivide(.int32, [Int32.min, -7, 7], by: 3) == [-715_827_882, -2, 2])
    #expect(runDivide(.int64, [Int64.min, -7, 7], by: 4) == [-2_305_843_009_213_693_952, -1, 1])
    #expect(runDivide(.int32, [Int32.min, .max], by: Int64(Int32.max) + 1) == [-1, 0])
  }

  /// Pairs (a, b) with the expected max and min, checked in both argument orders.
  @Test func floatMaxMinSpecialValues() {
    let nan = Float.nan.bitPattern
    let cases: [(Float, Float, max: UInt32, min: UInt32)] = [
      (-0.0, 0.0, max: 0x0000_0000, min: 0x8000_0000),
      (0.0, 0.0, max: 0x0000_0000, min: 0x0000_0000),
      (-0.0, -0.0, max: 0x8000_0000, min: 0x8000_0000),
      (.nan, 1, max: nan, min: nan),
      (-.nan, .infinity, max: nan, min: nan),
      (.signalingNaN, -.infinity, max: nan, min: nan),
      (Float(bitPattern: 0x7fc0_1234), Float(bitPattern: 0xffc0_4321), max: nan, min: nan),
      (.infinity, -.infinity, max: Float.infinity.bitPattern, min: (-Float.infinity).bitPattern),
      (-.infinity, 3, max: Float(3).bitPattern, min: (-Float.infinity).bitPattern),
      (.leastNonzeroMagnitude, 0, max: 1, min: 0),
      (-.leastNonzeroMagnitude, -0.0, max: 0x8000_0000, min: 0x8000_0001),
    ]
    for c in cases {
      for (a, b) in [(c.0, c.1), (c.1, c.0)] {
        let max = runReduce(.float32, .max, [a], [b], into: .separate)[0]
        let min = runReduce(.float32, .min, [a], [b], into: .separate)[0]
        #expect(max.bitPattern == c.max, "max(\(a), \(b)) = \(max)")
        #expect(min.bitPattern == c.min, "min(\(a), \(b)) = \(min)")
        // Every case is exact in float64, where NaN is float64's default NaN.
        for (op, want) in [(Op.max, c.max), (.min, c.min)] {
          let wide = Double(Float(bitPattern: want))
          let got = runReduce(.float64, op, [Double(a)], [Double(b)], into: .separate)[0]
          #expect(
            got.bitPattern == (wide.isNaN ? Double.nan : wide).bitPattern, "\(op)(\(a), \(b))")
        }
      }
    }
    let halfCases: [(DType, UInt16, UInt16, max: UInt16, min: UInt16)] = [
      (.float16, 0x8000, 0x0000, max: 0x0000, min: 0x8000),
      (.float16, 0x7e00, 0x3c00, max: 0x7e00, min: 0x7e00),
      (.float16, 0x7d01, 0xfc00, max: 0x7e00, min: 0x7e00),
      (.float16, 0xfe55, 0x7c00, max: 0x7e00, min: 0x7e00),
      (.float16, 0x7c00, 0xfc00, max: 0x7c00, min: 0xfc00),
      (.float16, 0x0001, 0x8001, max: 0x0001, min: 0x8001),
      (.bfloat16, 0x8000, 0x0000, max: 0x0000, min: 0x8000),
      (.bfloat16, 0x7fc0, 0x3f80, max: 0x7fc0, min: 0x7fc0),
      (.bfloat16, 0x7f81, 0xff80, max: 0x7fc0, min: 0x7fc0),
      (.bfloat16, 0xffd5, 0x7f80, max: 0x7fc0, min: 0x7fc0),
      (.bfloat16, 0x7f80, 0xff80, max: 0x7f80, min: 0xff80),
      (.bfloat16, 0x0001, 0x8001, max: 0x0001, min: 0x8001),
    ]
    for c in halfCases {
      for (a, b) in [(c.1, c.2), (c.2, c.1)] {
        let max = runReduce(c.0, .max, [a], [b], into: .separate)[0]
        let min = runReduce(c.0, .min, [a], [b], into: .separate)[0]
        #expect(max == c.max, "\(c.0) max(\(a), \(b))")
        #expect(min == c.min, "\(c.0) min(\(a), \(b))")
      }
    }
  }

  /// Half sum and prod canonicalize NaN too, so results never depend on payloads.
  @Test func halfNaNResultsAreCanonical() {
    let a: [UInt16] = [0x7d01, 0xfe33, 0x7c00, 0x0000]
    let b: [UInt16] = [0x3c00, 0x7e77, 0xfc00, 0x7c00]
    #expect(runReduce(.float16, .sum, a, b, into: .separate) == [0x7e00, 0x7e00, 0x7e00, 0x7c00])
    #expect(runReduce(.float16, .prod, a, b, into: .separate) == [0x7e00, 0x7e00, 0xfc00, 0x7e00])
    let c: [UInt16] = [0x7f81, 0xffc3, 0x7f80, 0x0000]
    let d: [UInt16] = [0x3f80, 0x7fd5, 0xff80, 0x7f80]
    #expect(runReduce(.bfloat16, .sum, c, d, into: .separate) == [0x7fc0, 0x7fc0, 0x7fc0, 0x7f80])
    #expect(runReduce(.bfloat16, .prod, c, d, into: .separate) == [0x7fc0, 0x7fc0, 0xff80, 0x7fc0])
  }

  @Test func float16ConversionsRoundTripAllBitPatterns() {
    var bad: [UInt16] = []
    for h in UInt16.min...UInt16.max {
      let f = kt_half_to_float(h)
      let back = kt_float_to_half(f)
      let ok: Bool
      if Float16(bitPattern: h).isNaN {
        // NaN widens quieted with sign and payload kept, and narrows back to the quieted half.
        ok =
          f.isNaN && f.bitPattern & 0x0040_0000 != 0 && f.bitPattern >> 31 == UInt32(h >> 15)
          && (f.bitPattern >> 13) & 0x3ff == UInt32(h & 0x3ff | 0x200) && back == h | 0x0200
      } else {
        ok = f.bitPattern == Float(Float16(bitPattern: h)).bitPattern && back == h
      }
      if !ok { bad.append(h) }
    }
    #expect(bad.isEmpty, "\(bad.count) bad, first \(bad.prefix(5))")
  }

  @Test func bfloat16ConversionsRoundTripAllBitPatterns() {
    var bad: [UInt16] = []
    for h in UInt16.min...UInt16.max {
      let f = kt_bfloat16_to_float(h)
      let back = kt_float_to_bfloat16(f)
      let ok =
        f.bitPattern == UInt32(h) << 16 && (f.isNaN ? back == h | 0x0040 : back == h)
      if !ok { bad.append(h) }
    }
    #expect(bad.isEmpty, "\(bad.count) bad, first \(bad.prefix(5))")
  }

  @Test func floatToFloat16Rounding() {
    let cases: [(Float, UInt16)] = [
      (1 + 0x1p-11, 0x3c00),  // halfway, ties to even (down)
      (1 + 3 * 0x1p-11, 0x3c02),  // halfway, ties to even (up)
      (1 + 0x1p-11 + 0x1p-23, 0x3c01),  // just above halfway
      (1 + 0x1p-11 - 0x1p-24, 0x3c00),  // just below halfway
      (65504, 0x7bff),
      (65519.996, 0x7bff),  // just below the overflow threshold
      (65520, 0x7c00),  // halfway to 2^16: ties to even overflows
      (1e9, 0x7c00),
      (-1e9, 0xfc00),
      (.greatestFiniteMagnitude, 0x7c00),
      (.infinity, 0x7c00),
      (-.infinity, 0xfc00),
      (-0.0, 0x8000),
      (0x1p-24, 0x0001),  // smallest subnormal
      (0x1p-25, 0x0000),  // halfway to the smallest subnormal, ties to even
      (0x1p-25 + 0x1p-40, 0x0001),
      (-0x1p-25, 0x8000),
      (3 * 0x1p-25, 0x0002),  // halfway between subnormals 1 and 2
      (5 * 0x1p-25, 0x0002),  // halfway between subnormals 2 and 3
      (0x1p-14 - 0x1p-25, 0x0400),  // halfway from largest subnormal to smallest normal
      (0x1p-14 - 0x1p-24, 0x03ff),
      (.leastNonzeroMagnitude, 0x0000),
      (-.leastNonzeroMagnitude, 0x8000),
      (.nan, 0x7e00),
      (Float(bitPattern: 0x7f80_0001), 0x7e00),  // signaling NaN comes out quiet
      (Float(bitPattern: 0xffc0_2000), 0xfe01),  // sign and top payload bits kept
    ]
    for (f, want) in cases {
      #expect(kt_float_to_half(f) == want, "\(f) (0x\(String(f.bitPattern, radix: 16)))")
    }
    // Swift's Float16(Float) is correctly rounded; compare on many random floats.
    var rng = SeededRandom(seed: 16)
    var bad: [UInt32] = []
    for i in 0..<1_000_000 {
      let f: Float
      switch i % 3 {
      case 0: f = Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))
      case 1: f = Float.random(in: -70000...70000, using: &rng)
      default: f = Float.random(in: -1e-4...1e-4, using: &rng)
      }
      if !f.isNaN && kt_float_to_half(f) != Float16(f).bitPattern { bad.append(f.bitPattern) }
    }
    #expect(bad.isEmpty, "\(bad.count) bad, first \(bad.prefix(5))")
  }

  @Test func floatToBfloat16Rounding() {
    let cases: [(UInt32, UInt16)] = [
      (0x3f80_8000, 0x3f80),  // halfway, ties to even (down)
      (0x3f81_8000, 0x3f82),  // halfway, ties to even (up)
      (0x3f80_8001, 0x3f81),  // just above halfway
      (0x3f80_7fff, 0x3f80),  // just below halfway
      (0x7f7f_7fff, 0x7f7f),
      (0x7f7f_8000, 0x7f80),  // halfway at the top overflows to Inf
      (0x7f7f_ffff, 0x7f80),  // greatest float
      (0xff7f_ffff, 0xff80),
      (0x7f80_0000, 0x7f80),
      (0x0000_8000, 0x0000),  // subnormal halfway, ties to even
      (0x0001_8000, 0x0002),
      (0x8000_0001, 0x8000),
      (0x7f80_0001, 0x7fc0),  // signaling NaN comes out quiet
      (0xff81_0000, 0xffc1),  // sign and top payload bits kept
    ]
    for (bits, want) in cases {
      let f = Float(bitPattern: bits)
      #expect(kt_float_to_bfloat16(f) == want, "0x\(String(bits, radix: 16))")
    }
    var rng = SeededRandom(seed: 17)
    var bad: [UInt32] = []
    for _ in 0..<1_000_000 {
      let f = Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))
      if !f.isNaN && kt_float_to_bfloat16(f) != bfloat16Reference(f) { bad.append(f.bitPattern) }
    }
    #expect(bad.isEmpty, "\(bad.count) bad, first \(bad.prefix(5))")
  }

  /// kt_reduce and kt_divide take the F16C path for whole groups of 8 when the CPU
  /// has it; the reference here is the portable scalar conversions
  /// (kt_half_to_float, kt_float_to_half), so every float16 bit pattern, against
  /// operands that exercise rounding, subnormals, overflow and NaN, must come out
  /// the same either way.
  @Test func float16FastPathMatchesPortableConversions() {
    let all = Array(UInt16.min...UInt16.max)
    let operands: [UInt16] = [
      0x0000, 0x8000, 0x3c00, 0xbc00, 0x2e66, 0x3555, 0x7bff, 0x0001, 0x03ff, 0x1400, 0x7c00,
      0x7e00, 0xfd01,
    ]
    for other in operands {
      let b = [UInt16](repeating: other, count: all.count)
      for op in Op.allCases {
        let expected = all.map { h in
          let r = referenceApply(op, kt_half_to_float(h), kt_half_to_float(other))
          return r.isNaN ? Float16.nan.bitPattern : kt_float_to_half(r)
        }
        expectSame(
          runReduce(.float16, op, all, b, into: .separate), expected, "\(op) with \(other)",
          inputs: { "for \(all[$0])" }, matches: ==)
      }
    }
    for divisor: Int64 in [1, 3, 7, 10, 1_000_000] {
      let expected = all.map { kt_float_to_half(kt_half_to_float($0) / Float(divisor)) }
      expectSame(
        runDivide(.float16, all, by: divisor), expected, "/ \(divisor)",
        inputs: { "for \(all[$0])" }, matches: ==)
    }
  }
}
