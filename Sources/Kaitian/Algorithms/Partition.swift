/// How `count` elements split into `parts` nearly equal contiguous blocks: the first
/// `count % parts` blocks get one element more. Every rank computes the same split.
struct Partition {
  let offsets: [Int]
  let counts: [Int]

  init(count: Int, parts: Int) {
    let base = count / parts
    let extra = count % parts
    var offsets: [Int] = []
    var counts: [Int] = []
    var offset = 0
    for part in 0..<parts {
      let size = base + (part < extra ? 1 : 0)
      offsets.append(offset)
      counts.append(size)
      offset += size
    }
    self.offsets = offsets
    self.counts = counts
  }

  init(counts: [Int]) {
    var offsets: [Int] = []
    var offset = 0
    for size in counts {
      offsets.append(offset)
      offset += size
    }
    self.offsets = offsets
    self.counts = counts
  }
}

/// Rank arithmetic modulo the communicator size.
@inline(__always)
func ringIndex(_ value: Int, _ size: Int) -> Int {
  ((value % size) + size) % size
}
