import Foundation
import Glibc
import KaitianOutput

/// Formats `kaitian bench` results: an nccl-tests-style table for people, or one JSON object
/// per size for machines.
final class BenchReport {
  private let options: BenchCommand
  private var busBandwidths: [Double] = []
  private var wrongTotal = 0

  init(options: BenchCommand) { self.options = options }

  private var rootText: String { options.collective.usesRoot ? "\(options.root)" : "-1" }
  private var opText: String { options.collective.usesReduceOp ? options.op : "none" }

  func printHeader() {
    guard !options.json else { return }
    let o = options
    emit(
      "# kaitian bench \(o.collective.rawValue): \(o.ranks) ranks, transport \(o.transport), "
        + "dtype \(o.dtype), op \(opText), root \(rootText), iters \(o.iters), warmup \(o.warmup)"
        + (o.check ? ", check on" : ""))
    emit("#")
    emit(
      "#" + pad("", 53) + pad("out-of-place", 33) + pad("in-place", 33))
    emit(
      "#" + pad("size", 11) + pad("count", 14) + pad("type", 10) + pad("redop", 8)
        + pad("root", 8) + columns("time", "algbw", "busbw", "#wrong")
        + columns("time", "algbw", "busbw", "#wrong"))
    emit(
      "#" + pad("(B)", 11) + pad("(elements)", 14) + pad("", 34)
        + columns("(us)", "(GB/s)", "(GB/s)", "") + columns("(us)", "(GB/s)", "(GB/s)", ""))
  }

  func printRow(
    bytes: Int, count: Int, outOfPlace: BenchWorker.Timing, inPlace: BenchWorker.Timing?
  ) {
    let factor = options.collective.busBandwidthFactor(ranks: options.ranks)
    func bandwidths(_ timing: BenchWorker.Timing) -> (algbw: Double, busbw: Double) {
      let algbw = timing.microseconds > 0 ? Double(bytes) / (timing.microseconds * 1e3) : 0
      return (algbw, algbw * factor)
    }
    let out = bandwidths(outOfPlace)
    let inp = inPlace.map(bandwidths)
    busBandwidths.append(out.busbw)
    if let inp { busBandwidths.append(inp.busbw) }
    wrongTotal += outOfPlace.wrong + (inPlace?.wrong ?? 0)
    if options.json {
      emit(
        jsonRecord(
          bytes: bytes, count: count, outOfPlace: (outOfPlace, out),
          inPlace: inPlace.map { ($0, bandwidths($0)) }))
      return
    }
    var line =
      " " + pad("\(bytes)", 11) + pad("\(count)", 14) + pad(options.dtype, 10) + pad(opText, 8)
      + pad(rootText, 8)
      + columns(
        fixed(outOfPlace.microseconds, 1), fixed(out.algbw, 2), fixed(out.busbw, 2),
        wrong(outOfPlace))
    if let inPlace, let inp {
      line += columns(
        fixed(inPlace.microseconds, 1), fixed(inp.algbw, 2), fixed(inp.busbw, 2), wrong(inPlace))
    } else {
      line += columns("N/A", "N/A", "N/A", "N/A")
    }
    emit(line)
  }

  /// One size's JSON object; the in-place fields are null when it was not measured, and the
  /// "wrong" counts null without --check.
  private func jsonRecord(
    bytes: Int, count: Int, outOfPlace: (BenchWorker.Timing, (algbw: Double, busbw: Double)),
    inPlace: (BenchWorker.Timing, (algbw: Double, busbw: Double))?
  ) -> String {
    func measured(_ prefix: String, _ result: (BenchWorker.Timing, (algbw: Double, busbw: Double))?)
      -> [(String, JSON)]
    {
      let errors = result.flatMap { options.check ? JSON.number(Double($0.0.wrong)) : nil } ?? .null
      return [
        (prefix + "time_us", result.map { .number($0.0.microseconds) } ?? .null),
        (prefix + "algbw_gbps", result.map { .number($0.1.algbw) } ?? .null),
        (prefix + "busbw_gbps", result.map { .number($0.1.busbw) } ?? .null),
        (prefix + "wrong", errors),
      ]
    }
    let root = options.collective.usesRoot ? options.root : -1
    let fields: [(String, JSON)] = [
      ("collective", .string(options.collective.rawValue)), ("size_bytes", .number(Double(bytes))),
      ("count", .number(Double(count))), ("dtype", .string(options.dtype)), ("op", .string(opText)),
      ("root", .number(Double(root))), ("ranks", .number(Double(options.ranks))),
      ("transport", .string(options.transport.rawValue)),
    ]
    return JSON.object(fields + measured("", outOfPlace) + measured("inplace_", inPlace)).rendered
  }

  func printFooter() {
    guard !options.json else { return }
    let average =
      busBandwidths.isEmpty ? 0 : busBandwidths.reduce(0, +) / Double(busBandwidths.count)
    let verdict = options.check ? (wrongTotal == 0 ? "OK" : "FAILED") : "(not checked)"
    emit("# Out of bounds values : \(options.check ? "\(wrongTotal)" : "N/A") \(verdict)")
    emit("# Avg bus bandwidth    : \(fixed(average, 4))")
    emit("#")
  }

  private func wrong(_ timing: BenchWorker.Timing) -> String {
    options.check ? "\(timing.wrong)" : "N/A"
  }

  private func columns(_ a: String, _ b: String, _ c: String, _ d: String) -> String {
    pad(a, 9) + pad(b, 8) + pad(c, 8) + pad(d, 7)
  }

  private func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? " " + text : String(repeating: " ", count: width - text.count) + text
  }

  private func fixed(_ value: Double, _ decimals: Int) -> String {
    String(format: "%.*f", Int32(decimals), value)
  }

  private func emit(_ line: String) {
    print(line)
    fflush(nil)
  }
}
