import Foundation
import XCTest
@testable import SRCore

/// The Swift core against the shared vectors (../android_demo/testdata, `python -m nsr_edge.app_vectors`): the same
/// checks as the Kotlin JUnit tests, which are the ones run on our machines.
enum Vectors {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../android_demo/testdata").standardizedFileURL
    static func data(_ rel: String) throws -> Data { try Data(contentsOf: dir.appendingPathComponent(rel)) }
    static func json(_ rel: String) throws -> Any { try JSONSerialization.jsonObject(with: try data(rel)) }
    static var index: [String: Any] { get throws { try json("vectors.json") as! [String: Any] } }
    static func floats(_ rel: String) throws -> [Float] {
        let d = try data(rel)
        return stride(from: 0, to: d.count, by: 4).map { i in
            Float(bitPattern: UInt32(d[i]) | UInt32(d[i + 1]) << 8 | UInt32(d[i + 2]) << 16 | UInt32(d[i + 3]) << 24)
        }
    }
    static func card(_ name: String) throws -> ModelCard {
        try ModelCard.parse(try data((try index["cards"] as! [String: String])[name]!))
    }
    static func cases() throws -> [String: [String: Any]] { try index["cases"] as! [String: [String: Any]] }
    static func image(_ name: String) throws -> FloatImage {
        let m = (try index["images"] as! [String: [String: Any]])[name]!
        let c = m["channels"] as! Int
        return try FloatImage.fromInterleaved8([UInt8](try data(m["file"] as! String)), height: m["height"] as! Int,
                                               width: m["width"] as! Int, stride: c, channels: c)
    }
    static func plan(_ c: String) throws -> [TilePlacement] {
        (try json("cases/\(c)/plan.json") as! [[Any]]).map { r in
            let i = r.prefix(8).map { ($0 as! NSNumber).intValue }
            return TilePlacement(y: i[0], x: i[1], height: i[2], width: i[3], coreY: i[4], coreX: i[5], coreH: i[6], coreW: i[7],
                                 weight: (r[8] as! NSNumber).doubleValue)
        }
    }
}

/// nearest-neighbour upscale + 0.5 * the tile's top-left value, in the tile's own layout.
func standIn(_ t: Tensor, _ s: Int) -> Tensor {
    let (c, h, w) = (t.shape[1], t.shape[2], t.shape[3]), nchw = t.layout == .nchw
    func at(_ k: Int, _ y: Int, _ x: Int) -> Float { nchw ? t.data[(k * h + y) * w + x] : t.data[(y * w + x) * c + k] }
    let (oh, ow) = (h * s, w * s)
    var out = [Float](repeating: 0, count: c * oh * ow)
    for k in 0..<c {
        let corner = 0.5 * at(k, 0, 0)
        for y in 0..<oh { for x in 0..<ow {
            let v = at(k, y / s, x / s) + corner
            if nchw { out[(k * oh + y) * ow + x] = v } else { out[(y * ow + x) * c + k] = v }
        } }
    }
    return Tensor(shape: [1, c, oh, ow], data: out, layout: t.layout)
}

struct StandInEngine: TileEngine {
    let scale: Int
    var methods: Set<String> { ["forward"] }
    func inputShape(_ method: String) -> [Int]? { nil }
    func execute(_ method: String, _ inputs: [Tensor]) throws -> [Tensor] { [standIn(inputs[0], scale)] }
}

/// Replays the routing logits recorded from the real runtime (routes.json).
final class ReplayEngine: TileEngine {
    let plan: DispatchPlan, tiles: [[String: Any]], scale: Int
    var tile = 0, call = 0
    init(plan: DispatchPlan, routes: [String: Any], scale: Int) {
        self.plan = plan; self.tiles = routes["tiles"] as! [[String: Any]]; self.scale = scale
    }
    var methods: Set<String> { Set(plan.stages.flatMap(\.methods)) }
    func inputShape(_ method: String) -> [Int]? { nil }
    func execute(_ method: String, _ inputs: [Tensor]) throws -> [Tensor] {
        let st = plan.stages.first { $0.methods.contains(method) }!
        let rec = (tiles[tile]["calls"] as! [[String: Any]])[call]
        XCTAssertEqual(rec["method"] as? String, method, "tile \(tile) call \(call)")
        let logits = rec["logits"] as! [String: [NSNumber]]
        let outs = st.outputs.map { n -> Tensor in
            if let l = logits[n] { return Tensor(shape: [1, l.count], data: l.map { $0.floatValue }) }
            if n == "output" { return standIn(inputs[st.inputs.firstIndex(of: "tile")!], scale) }
            return Tensor(shape: [1], data: [Float(call)])
        }
        call += 1
        if call == plan.stages.count { call = 0; tile += 1 }
        return outs
    }
}

final class VectorTests: XCTestCase {
    func testPlansTilesAndStitchedOutputs() throws {
        for (name, c) in try Vectors.cases() {
            let card = try Vectors.card(c["card"] as! String), img = try Vectors.image(c["image"] as! String)
            let plan = try planTiles(height: img.height, width: img.width, spec: card.tileSpec)
            XCTAssertEqual(plan, try Vectors.plan(name), name)
            let want = try Vectors.floats("cases/\(name)/tiles.f32"), n = want.count / plan.count
            let packer = TilePacker(image: img, plan: plan, padMode: card.tileSpec.padMode)
            for (i, t) in plan.enumerated() {
                XCTAssertEqual(packer.tile(t, layout: .nchw).data, Array(want[(i * n)..<((i + 1) * n)]), "\(name) tile \(i)")
                XCTAssertEqual(packer.tile(t, layout: .nhwc).toNCHW().data, Array(want[(i * n)..<((i + 1) * n)]))
            }
            let engine: TileEngine = card.dispatch.map { ReplayEngine(plan: $0, routes: (try? Vectors.json("cases/\(name)/routes.json")) as! [String: Any], scale: card.scale) }
                ?? StandInEngine(scale: card.scale)
            let runner = try TiledRunner(card: card, engine: engine)
            let out = try runner.run(img), expected = try Vectors.floats("cases/\(name)/output.f32")
            XCTAssertEqual(out.data.count, expected.count, name)
            for (a, b) in zip(out.data, expected) where abs(a - b) > 1e-6 { XCTFail("\(name): \(a) != \(b)"); break }
            if card.dispatch != nil {
                let recorded = ((try Vectors.json("cases/\(name)/routes.json") as! [String: Any])["tiles"] as! [[String: Any]]).map { $0["banks"] as! [Int] }
                XCTAssertEqual(runner.lastRoutes, recorded)
            }
        }
    }

    func testInt8Packing() throws {
        let q = try Vectors.index["int8"] as! [String: Any]
        let name = q["case"] as! String, c = try Vectors.cases()[name]!
        let card = try Vectors.card(c["card"] as! String), img = try Vectors.image(c["image"] as! String)
        let plan = try planTiles(height: img.height, width: img.width, spec: card.tileSpec)
        let tile = TilePacker(image: img, plan: plan, padMode: card.tileSpec.padMode).tile(plan[q["tile"] as! Int], layout: .nchw)
        let params = try QuantParams(dtype: q["dtype"] as! String, scale: (q["scale"] as! NSNumber).doubleValue, zeroPoint: q["zero_point"] as! Int)
        XCTAssertEqual(params.quantize(tile.data), [UInt8](try Vectors.data(q["file"] as! String)))
    }

    func testBadInput() throws {
        var card = try JSONSerialization.jsonObject(with: try Vectors.data("cards/executorch_fp32/model.json")) as! [String: Any]
        card["version"] = "3.0"
        XCTAssertThrowsError(try ModelCard.parse(try JSONSerialization.data(withJSONObject: card))) {
            XCTAssertEqual(($0 as! SRCoreError).code, .unsupportedVersion)
        }
        let rgb = try Vectors.card("executorch_fp32")
        XCTAssertThrowsError(try TiledRunner(card: rgb, engine: StandInEngine(scale: 2)).run(try FloatImage(channels: 1, height: 4, width: 4, data: .init(repeating: 0, count: 16)))) {
            XCTAssertEqual(($0 as! SRCoreError).code, .channelMismatch)
        }
        XCTAssertThrowsError(try rgb.artifactName { _ in false }) { XCTAssertEqual(($0 as! SRCoreError).code, .missingArtifact) }
        XCTAssertThrowsError(try rgb.method(forTile: 48)) { XCTAssertEqual(($0 as! SRCoreError).code, .tileNotAccepted) }
        XCTAssertEqual(try argmaxFirst([0.25, 0.25], where: "t"), 0)
        XCTAssertThrowsError(try argmaxFirst([0, .nan], where: "t"))
        XCTAssertEqual(padIndexMap(n: 3, before: 4, after: 4, padMode: "reflect"), [2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0])
    }
}
