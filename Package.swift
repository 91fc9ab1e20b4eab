// swift-tools-version: 6.0
import PackageDescription

/// Absolute path of the KaitianC target's header module and export list: compiler and linker
/// flags are not resolved relative to the package.
let kaitianCHeader = String(#filePath.dropLast("/Package.swift".count)) + "/Sources/KaitianC/Header"

let package = Package(
  name: "Kaitian",
  products: [
    .library(name: "Kaitian", targets: ["Kaitian"]),
    // The C ABI (include/kaitian.h) as a shared object that Python loads through ctypes.
    .library(name: "KaitianC", type: .dynamic, targets: ["KaitianC"]),
    .executable(name: "kaitian", targets: ["KaitianCLI"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
  ],
  targets: [
    .target(
      name: "CKaitianShim",
      cSettings: [.unsafeFlags(["-O3", "-fno-strict-aliasing"])]
    ),
    // The one POSIX layer: the system-call wrapper, sockets, threads and locks, deadlines,
    // whole-file reads and atomic writes, process spawn, the log.
    .target(name: "KaitianPOSIX"),
    // Who may join a job: the job token, SHA-256 and HMAC, the connection handshake.
    .target(name: "KaitianAuth", dependencies: ["KaitianPOSIX"]),
    // The key-value store a job meets through: embedded server, client, wire format, and the
    // authenticated rendezvous over any store.
    .target(name: "KaitianStore", dependencies: ["KaitianAuth", "KaitianPOSIX"]),
    .target(
      name: "Kaitian",
      dependencies: ["CKaitianShim", "KaitianAuth", "KaitianPOSIX", "KaitianStore"]),
    .target(
      name: "KaitianC",
      dependencies: ["Kaitian", "KaitianAuth", "KaitianPOSIX", "KaitianRedis", "KaitianStore"],
      exclude: ["Header"],
      // The header is imported as a Clang module for its exact struct layouts; the version
      // script keeps the library's exports to the kt* functions of include/kaitian.h.
      swiftSettings: [
        .unsafeFlags(["-Xcc", "-fmodule-map-file=\(kaitianCHeader)/module.modulemap"])
      ],
      linkerSettings: [
        .unsafeFlags(["-Xlinker", "--version-script=\(kaitianCHeader)/exports.map"])
      ]),
    // Redis as the job store: a RESP2 client on swift-nio, and the store address locator.
    .target(
      name: "KaitianRedis",
      dependencies: [
        "KaitianAuth", "KaitianPOSIX", "KaitianStore",
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "NIOTLS", package: "swift-nio"),
      ]),
    .testTarget(
      name: "KaitianRedisTests",
      dependencies: [
        "KaitianRedis", "KaitianAuth", "KaitianPOSIX", "KaitianStore", "Kaitian", "KaitianCLI",
        "KaitianLaunch",
      ]),
    // Starting and supervising ranks, and what a `kaitian run` job is: its plan, job file, store,
    // record for the monitor, and the launchers' rendezvous across nodes.
    .target(
      name: "KaitianLaunch",
      dependencies: [
        "KaitianAuth", "KaitianMonitor", "KaitianOutput", "KaitianPOSIX", "KaitianRedis",
        "KaitianStore",
        .product(name: "TOMLKit", package: "TOMLKit"),
      ]),
    // The tool's output formats: any JSON value through Foundation's Codable, and aligned text
    // tables (not in libKaitianC.so, which stays free of Foundation).
    .target(name: "KaitianOutput"),
    // What `kaitian monitor` shows: a job's monitor keys decoded, as text, JSON or a plot.
    .target(
      name: "KaitianMonitor", dependencies: ["KaitianPOSIX", "KaitianStore", "KaitianOutput"]),
    // What `kaitian devices` finds: vendor tools' probes, the accelerator check, the benchmark.
    .target(
      name: "KaitianDevices", dependencies: ["KaitianOutput", "KaitianLaunch", "KaitianPOSIX"]),
    // The `kaitian` command: one folder per subcommand, over the libraries above.
    .executableTarget(
      name: "KaitianCLI",
      dependencies: [
        "Kaitian",
        "KaitianAuth",
        "KaitianDevices",
        "KaitianOutput",
        "KaitianLaunch",
        "KaitianMonitor",
        "KaitianPOSIX",
        "KaitianRedis",
        "KaitianStore",
        "KaitianVerification",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      path: "Sources/kaitian"
    ),
    // Reference inputs and expected results: `kaitian bench --check` and the tests use them.
    .target(name: "KaitianVerification", dependencies: ["Kaitian", "CKaitianShim"]),
    // Helpers every test target shares (a seeded random generator).
    .target(name: "KaitianTestSupport", path: "Tests/KaitianTestSupport"),
    .testTarget(name: "KaitianShimTests", dependencies: ["CKaitianShim", "KaitianTestSupport"]),
    .testTarget(
      name: "KaitianStoreTests",
      dependencies: ["KaitianAuth", "KaitianPOSIX", "KaitianStore", "KaitianTestSupport"]),
    .testTarget(
      name: "KaitianTests",
      dependencies: [
        "Kaitian", "KaitianAuth", "KaitianPOSIX", "KaitianStore", "KaitianVerification",
        "KaitianLaunch", "CKaitianShim",
        "KaitianCLI", "KaitianDevices", "KaitianOutput", "KaitianMonitor", "KaitianTestWorker",
        "KaitianFuzz", "KaitianTestSupport",
      ]),
    // The fuzz target for the network decoders (scripts/fuzz.sh); a corpus replayer otherwise.
    .executableTarget(
      name: "KaitianFuzz", dependencies: ["KaitianStore"], path: "Tests/KaitianFuzz"),
    // Ranks as processes for the tests: runs the check matrix, or loops until killed.
    .executableTarget(
      name: "KaitianTestWorker",
      dependencies: ["Kaitian", "KaitianAuth", "KaitianStore", "KaitianVerification"],
      path: "Tests/KaitianTestWorker"),
  ],
  swiftLanguageModes: [.v6]
)
