/// Writes 8-bit palette PNG images without a compression library: the image data goes into
/// zlib "stored" (uncompressed) blocks, which every PNG decoder reads. Files are larger than
/// compressed ones (one byte per pixel), which is fine for a plot of about 0.7 MB.
package enum PNGEncoder {
  package static let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

  /// `pixels` holds width * height palette indices, row by row; at most 256 colors.
  package static func encode(width: Int, height: Int, palette: [PlotColor], pixels: [UInt8])
    -> [UInt8]
  {
    precondition(pixels.count == width * height, "one palette index per pixel")
    precondition(!palette.isEmpty && palette.count <= 256, "1 to 256 palette colors")
    var header: [UInt8] = []
    header.appendBigEndian(UInt32(width))
    header.appendBigEndian(UInt32(height))
    // Bit depth 8, color type 3 (palette), deflate, no filter, no interlace.
    header += [8, 3, 0, 0, 0]
    var scanlines: [UInt8] = []
    scanlines.reserveCapacity((width + 1) * height)
    for row in 0..<height {
      scanlines.append(0)  // filter type None
      scanlines += pixels[row * width..<(row + 1) * width]
    }
    var file = signature
    file += chunk("IHDR", header)
    file += chunk("PLTE", palette.flatMap { [$0.red, $0.green, $0.blue] })
    file += chunk("IDAT", zlibStored(scanlines))
    file += chunk("IEND", [])
    return file
  }

  /// A zlib stream (RFC 1950) of stored deflate blocks (RFC 1951, BTYPE 00) of up to 65535 bytes.
  package static func zlibStored(_ data: [UInt8]) -> [UInt8] {
    var stream: [UInt8] = [0x78, 0x01]
    var offset = 0
    repeat {
      let length = min(65535, data.count - offset)
      let isFinal = offset + length == data.count
      stream.append(isFinal ? 1 : 0)
      stream += [UInt8(length & 0xFF), UInt8(length >> 8)]
      stream += [UInt8(~length & 0xFF), UInt8((~length >> 8) & 0xFF)]
      stream += data[offset..<offset + length]
      offset += length
    } while offset < data.count
    stream.appendBigEndian(adler32(data))
    return stream
  }

  private static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
    var result: [UInt8] = []
    result.appendBigEndian(UInt32(data.count))
    let typed = Array(type.utf8) + data
    result += typed
    result.appendBigEndian(crc32(typed))
    return result
  }

  private static let crcTable: [UInt32] = (0..<256).map { index in
    var value = UInt32(index)
    for _ in 0..<8 { value = value & 1 == 1 ? 0xEDB8_8320 ^ (value >> 1) : value >> 1 }
    return value
  }

  /// CRC-32 (ISO 3309, the one PNG and zlib use).
  package static func crc32(_ data: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xFFFF_FFFF
    for byte in data { crc = crcTable[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
    return crc ^ 0xFFFF_FFFF
  }

  package static func adler32(_ data: [UInt8]) -> UInt32 {
    var a: UInt32 = 1
    var b: UInt32 = 0
    // 5552 bytes is the most that can be summed before the 32-bit sums may overflow.
    var offset = 0
    while offset < data.count {
      let end = min(offset + 5552, data.count)
      for byte in data[offset..<end] {
        a += UInt32(byte)
        b += a
      }
      a %= 65521
      b %= 65521
      offset = end
    }
    return b << 16 | a
  }
}

extension [UInt8] {
  fileprivate mutating func appendBigEndian(_ value: UInt32) {
    append(contentsOf: [24, 16, 8, 0].map { UInt8(truncatingIfNeeded: value >> $0) })
  }
}
