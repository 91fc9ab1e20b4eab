// swift-tools-version: 6.0
import PackageDescription

let package = Package(
  name: "Kaitian",
  products: [
    .library(name: "Kaitian", targets: ["Kaitian"]),
    // The C ABI (include/kaitian.h) as a shared object that Python loads through ctypes.
    .library(name: "KaitianC", type: .dynamic, targets: ["KaitianC"]),
    .executable(name: "kaitian", targets: ["KaitianCLI"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0")
  ],
  targets: [
    .target(
      name: "CKaitianShim",
      cSettings: [.unsafeFlags(["-O3", "-fno-strict-aliasing"])]
    ),
    .target(name: "KaitianStore"),
    .target(name: "Kaitian", dependencies: ["CKaitianShim", "KaitianStore"]),
    .target(name: "KaitianC", dependencies: ["Kaitian"]),
    .executableTarget(
      name: "KaitianCLI",
      dependencies: [
        "Kaitian",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      path: "Sources/kaitian"
    ),
    .testTarget(name: "KaitianShimTests", dependencies: ["CKaitianShim"]),
    .testTarget(name: "KaitianStoreTests", dependencies: ["KaitianStore"]),
    .testTarget(name: "KaitianTests", dependencies: ["Kaitian", "KaitianStore", "CKaitianShim"]),
  ],
  swiftLanguageModes: [.v6]
)
