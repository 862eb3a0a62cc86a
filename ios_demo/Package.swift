// swift-tools-version:5.9
// SRCore: the tiling core of the iOS demo (Foundation only; the same contract as android_demo/tiling-core).
// `swift test` runs its XCTest tests on the shared vectors in ../android_demo/testdata. Not compiled on our Linux
// machines (no Swift toolchain there): see README.md.
import PackageDescription

let package = Package(
    name: "SRCore",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [.library(name: "SRCore", targets: ["SRCore"])],
    targets: [
        .target(name: "SRCore", path: "Sources/SRCore"),
        .testTarget(name: "SRCoreTests", dependencies: ["SRCore"], path: "Tests/SRCoreTests"),
    ]
)
