import Foundation

/// A loaded artifact as the core sees it (Core ML `MLModel` in the app; stand-ins in tests).
public protocol TileEngine {
    /// Methods the artifact has (empty: cannot list them).
    var methods: Set<String> { get }
    /// NCHW input shape of `method`, or nil when unknown before a call.
    func inputShape(_ method: String) -> [Int]?
    func execute(_ method: String, _ inputs: [Tensor]) throws -> [Tensor]
}

/// First index of the largest logit (numpy's argmax); NaN or infinite logits are an error.
public func argmaxFirst(_ logits: [Float], where w: String) throws -> Int {
    guard !logits.isEmpty else { throw fail(.badOutput, "\(w): empty routing logits") }
    var best = 0
    for (i, v) in logits.enumerated() {
        guard v.isFinite else { throw fail(.badOutput, "\(w): routing logit \(i) is \(v); the artifact produced non-finite values") }
        if v > logits[best] { best = i }
    }
    return best
}

/// One tile through a hard-routed artifact by the card's `target_extra.dispatch` plan.
public struct Dispatcher {
    let plan: DispatchPlan, engine: TileEngine
    public init(plan: DispatchPlan, engine: TileEngine) throws {
        self.plan = plan; self.engine = engine
        if !engine.methods.isEmpty {
            for st in plan.stages { for m in st.methods where !engine.methods.contains(m) {
                throw fail(.dispatch, "the card's dispatch plan calls method '\(m)' (stage \(st.name)), which the program lacks: artifact and card are from different conversions")
            } }
        }
        guard plan.stages.contains(where: { $0.outputs.contains("output") }) else { throw fail(.dispatch, "no stage of the dispatch plan writes 'output'") }
    }
    public func run(_ tile: Tensor, routes: inout [Int]) throws -> Tensor {
        var env: [String: Tensor] = ["tile": tile]
        for st in plan.stages {
            var bank = 0
            if st.methods.count > 1 {
                guard let route = st.route, let logits = env[route] else { throw fail(.dispatch, "stage \(st.name) routes on '\(st.route ?? "")', which no earlier stage wrote") }
                guard logits.data.count == st.methods.count else { throw fail(.dispatch, "stage \(st.name): \(logits.data.count) routing logits for \(st.methods.count) banks") }
                bank = try argmaxFirst(logits.data, where: "stage \(st.name)")
                routes.append(bank)
            }
            let args = try st.inputs.map { n -> Tensor in
                guard let v = env[n] else { throw fail(.dispatch, "stage \(st.name) takes '\(n)', which no earlier stage wrote") }
                return v
            }
            let outs = try engine.execute(st.methods[bank], args)
            guard outs.count == st.outputs.count else { throw fail(.badOutput, "method \(st.methods[bank]) returned \(outs.count) values; the plan names \(st.outputs.count)") }
            for (n, v) in zip(st.outputs, outs) { env[n] = v }
        }
        guard let out = env["output"] else { throw fail(.dispatch, "the dispatch plan ended without 'output'") }
        return out
    }
}

public struct RunStats: Sendable { public let tiles: Int; public let totalMs: Double; public let engineMs: Double }

/// The whole tiled inference of one image by its card (the Kotlin `TiledRunner`).
public final class TiledRunner {
    public let card: ModelCard, method: MethodSpec, spec: TileSpec, layout: Layout
    let engine: TileEngine, dispatcher: Dispatcher?
    public private(set) var lastRoutes: [[Int]] = []
    public private(set) var lastStats = RunStats(tiles: 0, totalMs: 0, engineMs: 0)

    public init(card: ModelCard, engine: TileEngine, tile: Int? = nil) throws {
        self.card = card; self.engine = engine
        method = try card.method(forTile: tile)
        spec = try card.tileSpec(for: method)
        dispatcher = try card.dispatch.map { try Dispatcher(plan: $0, engine: engine) }
        layout = card.dispatch?.layout ?? card.input.layout
        if dispatcher == nil {
            if !engine.methods.isEmpty && !engine.methods.contains(method.name) {
                throw fail(.tileNotAccepted, "the engine has no method '\(method.name)' (it has \(engine.methods.sorted().joined(separator: ", ")))")
            }
            if let shape = engine.inputShape(method.name), shape != method.inputShape {
                throw fail(.tileNotAccepted, "the engine takes \(shape) in '\(method.name)'; the card's tile needs \(method.inputShape): artifact and card do not match")
            }
        }
    }

    public func run(_ image: FloatImage, progress: ((Int, Int) -> Void)? = nil) throws -> FloatImage {
        guard image.channels == card.channels else {
            let how = card.channels == 1 ? "feed the luma (FloatImage.lumaOf) and put the chroma back" : "replicate the gray channel to RGB"
            throw fail(.channelMismatch, "the model takes \(card.channels)-channel images, got \(image.channels) (\(how))")
        }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let plan = try planTiles(height: image.height, width: image.width, spec: spec)
        let packer = TilePacker(image: image, plan: plan, padMode: spec.padMode)
        let stitcher = Stitcher(plan: plan, scale: card.scale, channels: card.channels)
        var routes: [[Int]] = [], engineNs: UInt64 = 0
        for (i, t) in plan.enumerated() {
            let x = packer.tile(t, layout: layout)
            let e0 = DispatchTime.now().uptimeNanoseconds
            let y: Tensor
            if let dispatcher {
                var r: [Int] = []
                y = try dispatcher.run(x, routes: &r)
                routes.append(r)
            } else {
                let outs = try engine.execute(method.name, [x])
                guard outs.count == 1 else { throw fail(.badOutput, "method \(method.name) returned \(outs.count) outputs, expected 1") }
                y = outs[0]
            }
            engineNs += DispatchTime.now().uptimeNanoseconds - e0
            try stitcher.add(y)
            progress?(i + 1, plan.count)
        }
        let result = try stitcher.result()
        lastRoutes = routes
        lastStats = RunStats(tiles: plan.count, totalMs: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6, engineMs: Double(engineNs) / 1e6)
        return result
    }
}
